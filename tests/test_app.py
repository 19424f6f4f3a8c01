"""The web demo as a person uses it: served on 127.0.0.1 in a separate process and driven with gradio_client, the
exported folder run from a copy without cifar_lit, and (slow) the page opened in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_FLAGS, python
from PIL import Image

from cifar_lit.app.__main__ import main as app_main
from cifar_lit.reporting.evaluate import main as evaluate
from cifar_lit.reporting.inference import load_trained_model, predict_probabilities
from cifar_lit.run.train import main as train

gradio_client = pytest.importorskip("gradio_client")
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained(image_folder_master, tmp_path_factory) -> dict:
    """A narrow network trained on the colour-coded set, its best checkpoint, and a test image it gets right."""
    root = tmp_path_factory.mktemp("app")
    data = Path(shutil.copytree(image_folder_master, root / "data"))
    assert train([*TINY_FLAGS, "--data-dir", str(data), "--logdir", str(root / "logs"), "--max-epochs", "3",
                  "--target-acc", "1.0"]) == 0
    best = next((root / "logs").glob("version_*/checkpoints/best-*.ckpt"))
    model = load_trained_model(best)
    for path in sorted((data / "test").glob("*/*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        probabilities = predict_probabilities(model, image[None])[0]
        if model.class_names[int(probabilities.argmax())] == path.parent.name and probabilities.max() > 0.5:
            return {"best": best, "data": data, "image": path, "label": path.parent.name, "root": root}
    pytest.fail("the trained network classified no test image right")


def serve(args: list[str], cwd: Path, port: int, env: dict | None = None) -> subprocess.Popen:
    """`python ARGS` serving on `port`, in a process of its own (as a person starts the demo)."""
    process = python(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     env={**os.environ, **OFFLINE, **(env or {})})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail("the app did not start")


def stop(process: subprocess.Popen) -> str:
    """Ctrl-C, and the program's output once it has ended."""
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the server did not stop on Ctrl-C:\n{output}")
    return output


@pytest.fixture(scope="module")
def app(trained, tmp_path_factory):
    """`python -m cifar_lit.app` serving the trained network, its temporary folder in `tmp`. The SIGTERM test below
    stops it: one server for both tests (a start is seconds of imports)."""
    scratch = tmp_path_factory.mktemp("app_tmp")
    port = free_port()
    process = serve(["-m", "cifar_lit.app", "--ckpt", str(trained["best"]), "--port", str(port), "--gpus", "0"],
                    ROOT, port, {"TMPDIR": str(scratch)})
    yield {"url": f"http://127.0.0.1:{port}/", "process": process, "tmp": scratch}
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_the_app_gives_a_known_image_its_class_and_explains_a_corrupt_upload(app, trained, tmp_path):
    client = gradio_client.Client(app["url"], verbose=False)
    top, overlays, table, status = client.predict([gradio_client.handle_file(str(trained["image"]))], 3, 0.5,
                                                  "layer3", api_name="/classify")
    assert top["label"] == trained["label"] and len(top["confidences"]) == 3
    assert len(overlays) == 1 and trained["label"] in overlays[0]["caption"] and "Classified 1 image" in status
    assert table.count("\n") == 2 and "top 3" in table
    broken = tmp_path / "photo.png"
    broken.write_text("certainly not a PNG")
    top, overlays, _, status = client.predict([gradio_client.handle_file(str(broken)),
                                               gradio_client.handle_file(str(trained["image"]))], 10, 0.3, "layer4",
                                              api_name="/classify")
    assert "photo.png is not an image that can be read" in status and "Traceback" not in status
    assert top["label"] == trained["label"] and len(top["confidences"]) == 10, "the good image is still classified"


@pytest.mark.slow
def test_sigterm_stops_the_server_and_removes_its_temporary_folder(app):
    """SIGTERM takes Ctrl-C's way out (it raises KeyboardInterrupt), with its own exit status. Ctrl-C itself: the
    exported app's test below."""
    (folder,) = app["tmp"].glob("cifar_lit_app_*")
    assert (folder / "model.pt").is_file(), "the weights the page serves"
    process = app["process"]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output and "Keyboard interruption" in output, output
    assert not folder.exists(), "the weights and images are not left behind"


def test_an_invalid_or_taken_port_is_one_error_line_before_the_model_is_loaded(tmp_path, capsys):
    never_read = tmp_path / "none.ckpt"  # the port is refused before the checkpoint is looked at
    assert app_main(["--ckpt", str(never_read), "--port", "99999"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: argument --port: 99999 is not a port: give a number from 1 to 65535 (e.g. 7860). Run `python -m "
        "cifar_lit.app --help` for the accepted flags."]
    # before torch, Lightning and Gradio are even imported: the answer comes at once, not after seconds
    probe = ("import sys; from cifar_lit.app.__main__ import main; "
             f"code = main(['--ckpt', {str(never_read)!r}, '--port', '0']); "
             "print(code, sorted(name for name in ('torch', 'gradio', 'pytorch_lightning') if name in sys.modules))")
    # A fresh interpreter: the question is what it imports.
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[0] == "2 []", result.stdout + result.stderr
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert app_main(["--ckpt", str(never_read), "--port", str(port)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use by another program (another demo?). Give another with --port, "
        f"e.g. --port {port + 1}, or stop the program that holds it."]


@pytest.mark.slow
def test_the_app_refuses_a_hostile_checkpoint_as_evaluate_does(tmp_path, capsys):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, crafted)
    assert app_main(["--ckpt", str(crafted), "--gpus", "0", "--port", str(free_port())]) == 2
    said = capsys.readouterr().err
    assert said.startswith("error: Refusing to load") and not marker.exists()
    assert evaluate(["--ckpt", str(crafted), "--gpus", "0"]) == 2
    assert capsys.readouterr().err.strip() == said.strip(), "the same message as evaluate.py"


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    out = trained["root"] / "space"
    assert evaluate(["--ckpt", str(trained["best"]), "--gpus", "0", "--export-app", str(out)]) == 0
    return out


@pytest.mark.slow
def test_the_export_has_what_a_space_needs(exported):
    for name in ("app.py", "demo.py", "resnet.py", "pixels.py", "requirements.txt", "README.md", "model.pt",
                 "bundle.json"):
        assert (exported / name).is_file(), name
    card = (exported / "README.md").read_text()
    assert card.startswith("---\n") and "sdk: gradio" in card and "app_file: app.py" in card and "Test accuracy" in card
    weights = torch.load(exported / "model.pt", weights_only=True)
    assert all(not key.startswith("model.") for key in weights) and "linear.weight" in weights
    meta = json.loads((exported / "bundle.json").read_text())
    assert len(meta["examples"]) == 10 and meta["gallery"] and len(meta["class_names"]) == 10
    assert "gradio==" in (exported / "requirements.txt").read_text()
    assert "launch(demo)" in (exported / "app.py").read_text()


@pytest.mark.slow
def test_the_exported_app_runs_from_a_copy_without_cifar_lit_and_stops_on_ctrl_c(exported, trained,
                                                                                 tmp_path):
    copy = Path(shutil.copytree(exported, tmp_path / "space"))
    port = free_port()
    no_package = ("import runpy, sys; sys.modules['cifar_lit'] = None; sys.argv = ['app.py']; "
                  "runpy.run_path('app.py', run_name='__main__')")
    # What the copy alone imports: nothing preloaded.
    process = serve(["-c", no_package], copy, port, {"GRADIO_SERVER_PORT": str(port), "PYTHONPATH": ""})
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        top, *_ = client.predict([gradio_client.handle_file(str(trained["image"]))], 1, 0.5, "layer3",
                                 api_name="/classify")
        assert top["label"] == trained["label"]
    finally:
        output = stop(process)
    assert "ModuleNotFoundError" not in output, output
    assert process.returncode == 0 and "Keyboard interruption" in output and "Traceback" not in output, output


@pytest.mark.slow
def test_app_screenshot_runs_and_the_page_classifies_an_upload_and_asks_nothing_of_the_internet(trained, tmp_path,
                                                                                               monkeypatch, capsys):
    """benchmarks/app_screenshot.py, which draws the README's picture of the demo: the page served by
    `python -m cifar_lit.app` and used in a real browser (Debian's headless Chromium), on the narrow network."""
    pytest.importorskip("selenium.webdriver")
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("app_screenshot", ROOT / "benchmarks" / "app_screenshot.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # its dataclass looks itself up there
    spec.loader.exec_module(script)
    visits, real_visit = [], script.visit

    def kept_visit(*args, **kwargs):  # the script prints little; the test reads the whole visit
        visits.append(real_visit(*args, **kwargs))
        return visits[-1]

    monkeypatch.setattr(script, "visit", kept_visit)
    out = tmp_path / "app.png"
    code = script.main([str(trained["best"]), str(trained["data"]), str(trained["image"]), str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "requests to other hosts than the demo's: []" in printed, printed
    (page,) = visits
    assert page.top.splitlines()[0].strip() == trained["label"] or trained["label"] in page.top.splitlines()[:2]
    assert trained["label"] in printed and out.stat().st_size > 20_000
    assert "Misclassified test images" in page.page and "examples" in page.page
    assert any(url.startswith("http://127.0.0.1:") for url in page.requests), "the log saw the page's requests"
    assert script.outside(script.Visit("", "", ["http://127.0.0.1:1/a", "https://cdn.example/x.js"]),
                          "http://127.0.0.1:1/") == ["https://cdn.example/x.js"], "the check can see a request"
