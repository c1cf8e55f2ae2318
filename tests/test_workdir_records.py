"""A workdir's records (`config.json`, `dataset.json`) and RESULTS.md's table are written whole or
not at all, and a record damaged by something else is a clear error."""

import subprocess

import pytest

from gen_jax import cli, data, reproduce
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.errors import GenJaxError
from gen_jax.run import load_run
from tests.helpers.experiments import write_experiment
from tests.helpers.processes import check_call_mocked_cli, mocked_cli
from tests.helpers.runs import copied_run, disk_full_after


def _keeps_its_bytes_on_a_full_disk(write, path) -> None:
    """`write()` raises an OSError when the disk fills, and `path` keeps its old bytes, with no
    temporary file left beside it."""
    before = path.read_bytes()
    with disk_full_after(64), pytest.raises(OSError):
        write()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_records_rewritten_on_a_full_disk_keep_their_old_contents(tiny_run, tmp_path, mock_mnist):
    run = copied_run(tiny_run("classifier"), tmp_path / "run")
    config = config_lib.load(run / "config.json")
    _keeps_its_bytes_on_a_full_disk(
        lambda: config_lib.save(config, run / "config.json"), run / "config.json"
    )
    splits = {k: data.get_split(config.data, config.data[f"{k}_split"]) for k in ("train", "eval")}
    _keeps_its_bytes_on_a_full_disk(
        lambda: workdir_lib.record_dataset(run, config.data, splits, "in process"),
        run / "dataset.json",
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n" + "text by hand\n" * 20)
    _keeps_its_bytes_on_a_full_disk(
        lambda: reproduce.write_table("| a | b |\n" * 20, results), results
    )


def test_a_damaged_config_is_one_error_that_names_the_file(tiny_run, tmp_path, capsys, mock_mnist):
    experiment = tiny_run("classifier").parent / "tiny.py"
    run = copied_run(tiny_run("classifier"), tmp_path / "run")
    (run / "config.json").write_text('{"broken')
    for command in (["train", str(experiment), "--workdir", str(run)], ["evaluate", str(run)]):
        assert cli.main(command) == 2
        error = capsys.readouterr().err
        assert f"{run / 'config.json'} is not valid JSON" in error and "Traceback" not in error


def test_a_damaged_dataset_record_is_an_error_that_names_the_file(tiny_run, tmp_path, mock_mnist):
    run = copied_run(tiny_run("classifier"), tmp_path / "run")
    (run / "dataset.json").write_text("[1, 2")
    with pytest.raises(GenJaxError, match=f"{run / 'dataset.json'} is not valid JSON"):
        _ = load_run(run).class_names


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_error_and_leaves_no_partial_save(
    tmp_path,
):
    experiment, workdir = write_experiment(tmp_path / "tiny.py"), tmp_path / "run"
    command = ["train", str(experiment), "--workdir", str(workdir)]
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    full = {"GEN_JAX_FILE_SIZE_LIMIT": "60000"}  # as on a full disk
    with mocked_cli(command, env=full, **piped) as process:
        output, _ = process.communicate(timeout=300)
    assert process.returncode == 2, output
    error = f"gen-jax: error: saving a checkpoint in {workdir / 'checkpoints'} failed for want of"
    assert error in output
    assert "A checkpoint needs about" in output and "none is complete yet" in output
    assert list((workdir / "checkpoints").iterdir()) == []  # the unfinished save removed
    check_call_mocked_cli(command)  # with space again: trains, as the message says


@pytest.mark.parametrize(
    ("folder", "before", "now", "refused"),
    [
        ("", "tfds/D/mnist/3.0.1/train/28x28x1/60000", "download/mnist/ab/train/28x28x1/60000",
         "the training split's source (set data.source='tfds')"),
        ("", "tfds/D/mnist/3.0.1/train/28x28x1/60000", "tfds/E/mnist/3.0.1/train/28x28x1/60000",
         None),  # the prepared copy moved: the same examples
        ("/imgs", "folder/aa/500", "folder/bb/500",
         "the training split's images (data.folder's files)"),
    ],
)  # fmt: skip
def test_a_resume_on_other_examples_of_the_same_config_is_refused(
    folder, before, now, refused, tmp_path
):
    """The config alone does not say which examples a split holds: a data.name read from a TFDS
    copy then from its canonical files (another order), or a folder whose files changed."""
    config = config_lib.base_config()
    config.data.folder = folder
    config_lib.save(config, tmp_path / "config.json")
    (tmp_path / "dataset.json").write_text(f'{{"identity": {{"train": "{before}"}}}}')
    if refused is None:
        assert workdir_lib.resume_changes(config, tmp_path, 10, now) == {}
        return
    with pytest.raises(GenJaxError, match="--allow_config_change"):
        workdir_lib.resume_changes(config, tmp_path, 10, now)
    allowed = workdir_lib.resume_changes(config, tmp_path, 10, now, allow_change=True)
    assert allowed == {refused: [before, now]}
