"""notebooks/train_on_colab.ipynb, run end to end as Colab would, on tiny synthetic data on the CPU: its parameters
cell is replaced, everything else runs as written."""

from __future__ import annotations

import pytest
from helpers import ROOT, TINY_FLAGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
NOTEBOOK = ROOT / "notebooks" / "train_on_colab.ipynb"


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert [cell for cell in code if "parameters" in cell.metadata.get("tags", [])], "one cell holds the parameters"


@pytest.mark.slow
def test_the_notebook_runs_end_to_end(image_folder, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    flags = [*TINY_FLAGS, "--max-epochs", "2", "--target-acc", "1.0"]
    parameters.source = "\n".join([
        'REPOSITORY = ""', "INSTALL = False", f"DATA_DIR = {str(image_folder)!r}",
        f"LOGDIR = {str(tmp_path / 'logs')!r}", f"TRAIN_FLAGS = {flags!r}", "SHOW_TENSORBOARD = False",
        f"EXPORT_DIR = {str(tmp_path / 'space')!r}"])
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "\n".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
                        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert "Hardware plan: CPU" in outputs and "Test accuracy" in outputs
    images = sum(1 for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
                 if "image/png" in output.get("data", {}))
    assert images >= 4, "curves, misclassified grid, Grad-CAM, confusion matrix"
    assert (tmp_path / "space" / "app.py").is_file()
    assert list((tmp_path / "logs").glob("version_*/report/report.md"))
