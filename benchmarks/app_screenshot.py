"""The README's picture of the web demo: serve a checkpoint's demo on 127.0.0.1, open it in Debian's headless
Chromium, classify one test image and save a screenshot. It also lists what the page asked of hosts other than
127.0.0.1 (the demo must work offline) and exits 1 if it asked anything.

    python benchmarks/app_screenshot.py CKPT DATA_DIR IMAGE OUT.png
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cifar_lit.reporting.provenance import PROJECT_ROOT


@dataclass
class Visit:
    """What one visit of the page showed and asked for."""

    top: str  # the top classes, as the page shows them
    page: str  # the page's HTML after classifying
    requests: list[str]  # every http(s) and websocket URL the page requested


@contextmanager
def demo_server(checkpoint: str, data: str) -> Iterator[str]:
    """The demo served on a free port of 127.0.0.1 while the block runs; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cifar_lit.app", "--ckpt", checkpoint, "--data-dir", data,
                               "--port", str(port)], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 600  # the app prepares its examples and gallery before it listens
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the demo did not start (exit status {server.poll()})") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait()


def visit(url: str, image: str, out: str) -> Visit:
    """Open the page, upload `image`, classify it and save a screenshot to `out`."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the requests the page makes
    browser = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#images input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#images input[type=file]").send_keys(image)
        time.sleep(1)  # the upload shows before the button reads it
        browser.find_element(By.CSS_SELECTOR, "#classify").click()
        wait.until(lambda page: "Classified" in page.find_element(By.CSS_SELECTOR, "#status").text)
        time.sleep(2)  # the overlays fade in
        browser.save_screenshot(out)
        events = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
        requests = sorted({event["params"]["request"]["url"] for event in events
                           if event["method"] == "Network.requestWillBeSent"})
        return Visit(browser.find_element(By.CSS_SELECTOR, "#top").text, browser.page_source,
                     [url for url in requests if url.startswith(("http:", "https:", "ws:", "wss:"))])
    finally:
        browser.quit()


def outside(page_visit: Visit, url: str) -> list[str]:
    """The requests to any host but the demo's own."""
    local = (url, url.replace("http://", "ws://"))
    return [request for request in page_visit.requests if not request.startswith(local)]


def main(argv: Sequence[str] | None = None) -> int:
    checkpoint, data, image, out = (sys.argv[1:] if argv is None else argv)[:4]
    with demo_server(checkpoint, data) as url:
        page_visit = visit(url, image, out)
    print(page_visit.top.splitlines()[:2])
    asked = outside(page_visit, url)
    print(f"requests to other hosts than the demo's: {asked}")
    return 1 if asked else 0


if __name__ == "__main__":
    sys.exit(main())
