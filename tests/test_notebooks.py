"""Every notebook in notebooks/ is stored without outputs and executes top to bottom."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_they_are_stored_without_outputs():
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.cells[0].cell_type == "markdown", f"{path.name} opens with what it shows"
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_notebook_executes_top_to_bottom(
    path, real_data_dir, quick_runs, tmp_path, monkeypatch
):
    # the kernel inherits this environment: real MNIST, the quick runs the session has trained
    # anyway (linked, so they are loaded, not retrained), and short runs of the rest in tmp_path
    _, runs, _ = quick_runs
    for run in runs.iterdir():
        (tmp_path / run.name).symlink_to(run, target_is_directory=True)
    monkeypatch.setenv("TFDS_DATA_DIR", real_data_dir)
    monkeypatch.setenv("GEN_JAX_RUNS", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if one fails
    figures = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert figures, f"{path.name} drew no figure"
