"""The README's picture of the web demo: serve a checkpoint's demo on 127.0.0.1, open it in Debian's headless
Chromium, classify one test image and save a screenshot.

    python benchmarks/app_screenshot.py CKPT DATA_DIR IMAGE OUT.png
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cifar_lit.reporting.provenance import PROJECT_ROOT


def main() -> int:
    checkpoint, data, image, out = sys.argv[1:5]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cifar_lit.app", "--ckpt", checkpoint, "--data-dir", data,
                               "--port", str(port)], cwd=PROJECT_ROOT)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1280,1400"):
        options.add_argument(flag)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    return 1
                time.sleep(1)
        browser = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)
        try:
            browser.get(f"http://127.0.0.1:{port}/")
            wait = WebDriverWait(browser, 120)
            wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#images input[type=file]"))
            browser.find_element(By.CSS_SELECTOR, "#images input[type=file]").send_keys(image)
            time.sleep(1)
            browser.find_element(By.CSS_SELECTOR, "#classify").click()
            wait.until(lambda page: "Classified" in page.find_element(By.CSS_SELECTOR, "#status").text)
            time.sleep(2)
            browser.save_screenshot(out)
            print(browser.find_element(By.CSS_SELECTOR, "#top").text.splitlines()[:2])
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
