"""notebooks/train_on_colab.ipynb, run end to end as Colab would, on tiny synthetic data on the CPU: its parameters
cell is replaced, everything else runs as written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import GRIDS, ROOT, TINY_FLAGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
NOTEBOOK = ROOT / "notebooks" / "train_on_colab.ipynb"


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert [cell for cell in code if "parameters" in cell.metadata.get("tags", [])], "one cell holds the parameters"


def a_repository_of_this_checkout(folder: Path) -> Path:
    """A git repository holding this working tree as it is (the files git would commit), for the notebook to clone
    as Colab clones REPOSITORY."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *command], cwd=folder, check=True)
    return folder


def run_as_colab(content: Path, parameters: dict, stop_before: str | None = None) -> nbformat.NotebookNode:
    """The notebook run by a fresh kernel in Colab's working folder (outside any checkout), its parameters cell
    replaced; everything else runs as written, up to the markdown cell that starts with `stop_before`."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if stop_before is not None:
        notebook.cells = notebook.cells[: next(index for index, cell in enumerate(notebook.cells)
                                               if cell.source.startswith(stop_before))]
    (cell,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(content)}}).execute()
    return notebook


def text_of(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def test_the_notebook_has_no_relative_links():
    """A link to ../README.md is dead in Colab, which opens the notebook alone."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    links = [link for cell in notebook.cells if cell.cell_type == "markdown"
             for link in re.findall(r"\]\(([^)]+)\)", cell.source)]
    assert all(link.startswith(("https://", "http://", "#")) for link in links), links


@pytest.mark.slow
def test_the_notebook_runs_in_colabs_folder_and_again_after_a_runtime_restart(image_folder, tmp_path):
    repository = a_repository_of_this_checkout(tmp_path / "repository")
    content = tmp_path / "content"  # Colab's working folder: no checkout in it
    content.mkdir()
    flags = [*TINY_FLAGS, *GRIDS, "--max-epochs", "2", "--target-acc", "1.0", "--ckpt-every-n-epochs", "1"]
    parameters = {"REPOSITORY": str(repository), "INSTALL": False, "DATA_DIR": str(image_folder),
                  "LOGDIR": str(tmp_path / "logs"), "KEEP_ON_DRIVE": False, "TRAIN_FLAGS": flags, "RESUME": False,
                  "SHOW_TENSORBOARD": False, "EXPORT_DIR": str(tmp_path / "space")}
    notebook = run_as_colab(content, parameters)
    outputs = text_of(notebook)
    assert f"project: {content / 'cifar_lit'}" in outputs and "Hardware plan: CPU" in outputs
    assert "Test accuracy" in outputs and "Epoch" not in outputs, "the training output, without a progress bar"
    images = sum(1 for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
                 if "image/png" in output.get("data", {}))
    assert images >= 4, "curves, misclassified grid, Grad-CAM, confusion matrix"
    assert (tmp_path / "space" / "app.py").is_file()
    (run_dir,) = (tmp_path / "logs").glob("version_*")
    assert (run_dir / "report" / "report.md").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()

    # A runtime restart: a new kernel in /content again, the clone there already; the run is resumed (it had ended,
    # so nothing is trained again) and the cell after it shows it (the report and export cells ran above).
    again = text_of(run_as_colab(content, {**parameters, "RESUME": True}, stop_before="## A report"))
    assert f"project: {content / 'cifar_lit'}" in again and "Test accuracy" in again
    assert list((tmp_path / "logs").glob("version_*")) == [run_dir], "no second run folder"
