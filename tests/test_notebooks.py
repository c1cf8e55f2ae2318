"""Every notebook in notebooks/ is stored without outputs and executes top to bottom."""

import nbformat
import pytest
from nbclient import NotebookClient

from gen_jax import config as config_lib
from gen_jax import train
from tests.helpers.runs import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PROMISED = [  # the notebooks README promises
    "classifier_features",
    "diffusion_sampling",
    "gan_latent_walk",
    "vae_latent_space",
    "your_image_folder",
]


def test_the_promised_notebooks_are_there_stored_without_outputs_and_check_what_they_show():
    assert [path.stem for path in NOTEBOOKS] == PROMISED
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.cells[0].cell_type == "markdown", f"{path.name} opens with what it shows"
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
        checks = [c for c in notebook.cells if c.cell_type == "code" and "assert " in c.source]
        assert checks, f"{path.name} asserts nothing of what it shows"


NOTEBOOK_RUNS = {  # the runs the notebooks load that the quick reproduction does not train
    "mnist_vae_2d": [  # a one-sample final NLL: the conv decoder over the test set once
        "--config.train.num_steps=30",
        *[f"--config.task.{key}=1" for key in ("eval_samples", "final_eval_samples")],
        "--config.task.eval_sample_chunk=1",
    ],
    "mnist_cgan": ["--config.train.num_steps=30", "--config.task.classifier_workdir="],
}


@pytest.fixture(scope="module")
def notebook_runs(real_data_dir, quick_runs, real_diffusion_run, tmp_path_factory):
    """A runs folder for the notebooks: the quick runs and the short diffusion run the session
    trains anyway (linked), and 30-step runs on the real MNIST of the others. A notebook only
    needs a finished run to load (it trains a 300-step one where there is none, which its tests
    would wait for)."""
    _, quick, _ = quick_runs
    root = tmp_path_factory.mktemp("notebook_runs")
    for run in [*quick.iterdir(), real_diffusion_run[0]]:
        (root / run.name).symlink_to(run, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", real_data_dir)
        for name, overrides in NOTEBOOK_RUNS.items():
            config = config_lib.load_experiment(REPO / "experiments" / f"{name}.py")
            config_lib.apply_overrides(config, overrides)
            train.run(config, root / name)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_notebook_executes_top_to_bottom(path, real_data_dir, notebook_runs, monkeypatch):
    # the kernel inherits this environment: real MNIST and the runs to load
    monkeypatch.setenv("TFDS_DATA_DIR", real_data_dir)
    monkeypatch.setenv("GEN_JAX_RUNS", str(notebook_runs))
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
