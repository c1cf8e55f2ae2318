"""A checkpoint damaged after orbax finished it (truncated by a full disk, overwritten, a file
lost) loses nothing: readers name it and the steps to load instead; the training run moves it
aside and resumes, bitwise, from the newest checkpoint that restores."""

import gc
import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from gen_jax import cli, train
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.checkpoint import Checkpointer
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import read_metrics
from gen_jax.run import load_run
from tests.helpers.runs import assert_trees_equal, copied_run

# when one array cannot be read, orbax cancels its other reads, whose coroutines raise again as
# they are collected (Python reports it and carries on); the error the user sees is the first
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def finished(tiny_run):
    """The session's tiny classifier run of 6 steps, with checkpoints at steps 2, 4 and 6."""
    return tiny_run(**{"train.num_steps": 6, "train.checkpoint_every": 2})


@pytest.fixture
def workdir(finished, tmp_path):
    """A copy of the finished run, to damage. Afterwards, the reads orbax cancelled are
    collected here, under this module's warning filter, not in whichever test runs next."""
    yield copied_run(finished, tmp_path / "run")
    gc.collect()


def files(folder):
    return sorted(path for path in folder.rglob("*") if path.is_file())


def truncate_state(checkpoint):  # what the full disk of the report left
    for path in files(checkpoint / "state"):
        os.truncate(path, min(100, path.stat().st_size))


def overwrite_state(checkpoint):
    rng = np.random.default_rng(0)
    for path in files(checkpoint / "state"):
        path.write_bytes(rng.bytes(path.stat().st_size))


def delete_an_array_file(checkpoint):  # the largest file holds array bytes, no metadata
    max(files(checkpoint / "state"), key=lambda path: path.stat().st_size).unlink()


def delete_metadata(checkpoint):
    (checkpoint / "state" / "_METADATA").unlink()


def truncate_data(checkpoint):  # the data iterator's position
    os.truncate(checkpoint / "data" / "process_0-of-1.json", 10)


def listing(folder):
    """Every path under `folder` with its size: what moving or deleting would change."""
    return {str(path.relative_to(folder)): path.stat().st_size for path in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", [truncate_state, overwrite_state, delete_an_array_file, truncate_data]
)
def test_training_moves_a_damaged_checkpoint_aside_and_resumes_bitwise_before_it(
    damage, finished, workdir, mock_mnist, capsys
):
    damage(workdir / "checkpoints" / "6")
    damaged_files = listing(workdir / "checkpoints" / "6")
    train.run(config_lib.load(workdir / "config.json"), workdir)

    err = capsys.readouterr().err
    assert "the checkpoint at step 6" in err and "resumes at step 4" in err
    [record] = [json.loads(line) for line in (workdir / "damaged_checkpoints.jsonl").open()]
    assert record["step"] == 6 and record["resumes_at"] == 4
    assert listing(workdir / record["moved_to"]) == damaged_files  # moved, never deleted
    assert Checkpointer(workdir / "checkpoints").all_steps() == [2, 4, 6]  # 6 saved anew
    logged = [
        r["step"] for r in read_metrics(workdir) if r["split"] == "train" and r["name"] == "loss"
    ]
    assert logged == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 recorded once, by the resumed run
    # resuming is bitwise identical to not stopping (test_distributed), so steps 5 and 6
    # trained again from step 4 give exactly the state the undamaged run saved at step 6
    assert_trees_equal(workdir_lib.load_state(workdir)[3], workdir_lib.load_state(finished)[3])


@pytest.mark.slow
def test_training_moves_every_damaged_newer_checkpoint_aside(finished, workdir, mock_mnist):
    truncate_state(workdir / "checkpoints" / "6")
    delete_an_array_file(workdir / "checkpoints" / "4")
    train.run(config_lib.load(workdir / "config.json"), workdir)
    records = [json.loads(line) for line in (workdir / "damaged_checkpoints.jsonl").open()]
    assert [(r["step"], r["resumes_at"]) for r in records] == [(6, 2), (4, 2)]
    assert all((workdir / r["moved_to"]).is_dir() for r in records)
    assert_trees_equal(
        workdir_lib.load_state(workdir)[3], workdir_lib.load_state(finished)[3]
    )  # as above


@pytest.mark.parametrize("damage", [truncate_state, delete_an_array_file, delete_metadata])
def test_loading_a_damaged_checkpoint_names_it_and_the_steps_to_load_and_moves_nothing(
    damage, workdir, mock_mnist
):
    damage(workdir / "checkpoints" / "6")
    before = listing(workdir)
    with pytest.raises(GenJaxError) as error:
        load_run(workdir)
    message = str(error.value)
    assert "checkpoint at step 6" in message and "6/state: " in message  # the step and item
    assert "--step N" in message and "step=N" in message and "steps [2, 4]" in message
    assert listing(workdir) == before  # a reader: the run may be writing
    assert load_run(workdir, step=4).step == 4


def test_a_damaged_array_file_is_named_by_the_array_that_failed(workdir, mock_mnist):
    delete_an_array_file(workdir / "checkpoints" / "6")
    with pytest.raises(GenJaxError, match=r'6/state: ValueError: \w+: Error reading "[\w.]+/'):
        load_run(workdir)


def test_damage_to_the_only_checkpoint_is_an_error_that_moves_and_deletes_nothing(
    workdir, mock_mnist
):
    for step in ("2", "4"):
        shutil.rmtree(workdir / "checkpoints" / step)
    truncate_state(workdir / "checkpoints" / "6")
    before = listing(workdir)
    with pytest.raises(GenJaxError, match=r"no checkpoint in .* can be read.* Nothing was moved"):
        train.run(config_lib.load(workdir / "config.json"), workdir)
    with pytest.raises(GenJaxError, match=r"step 6 .* cannot be read.* the only checkpoint"):
        load_run(workdir)
    assert listing(workdir) == before


def test_a_run_whose_last_checkpoint_was_damaged_still_refuses_a_changed_config(
    workdir, mock_mnist
):
    truncate_state(workdir / "checkpoints" / "6")  # the run resumes at 4: it trains again
    config = config_lib.load(workdir / "config.json")
    config.optimizer.learning_rate *= 2
    with pytest.raises(GenJaxError, match=r"trained to step 4 with other settings"):
        train.run(config, workdir)


def _failing_restore(monkeypatch, error: Exception, times: int) -> list[int]:
    """Make orbax's restore raise `error` the first `times` calls; returns the steps it failed."""
    restore, failed = ocp.CheckpointManager.restore, []

    def failing(self, step, *args, **kwargs):
        if len(failed) < times:
            failed.append(step)
            raise error
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
    return failed


def test_a_passing_read_error_is_retried_once_and_is_not_damage(
    finished, workdir, mock_mnist, monkeypatch
):
    before = listing(workdir / "checkpoints")
    failed = _failing_restore(monkeypatch, OSError(5, "Input/output error"), times=1)
    train.run(config_lib.load(workdir / "config.json"), workdir)  # resumes at 6: nothing to do
    assert failed == [6] and listing(workdir / "checkpoints") == before
    assert not (workdir / "damaged_checkpoints").exists()
    assert_trees_equal(workdir_lib.load_state(workdir)[3], workdir_lib.load_state(finished)[3])


def test_running_out_of_memory_while_restoring_is_not_damage(workdir, mock_mnist, monkeypatch):
    before = listing(workdir / "checkpoints")
    _failing_restore(monkeypatch, MemoryError(), times=10)
    with pytest.raises(GenJaxError, match=r"step 6 .* ran out of memory .* is not damaged"):
        train.run(config_lib.load(workdir / "config.json"), workdir)
    assert listing(workdir / "checkpoints") == before
    assert not (workdir / "damaged_checkpoints").exists()


def test_a_checkpoint_that_does_not_fit_the_config_is_not_damage(workdir, mock_mnist):
    before = listing(workdir)
    config = config_lib.load(workdir / "config.json")
    config.model.hidden = 64
    with pytest.raises(GenJaxError, match="does not fit this config"):
        train.run(config, workdir)
    assert listing(workdir) == before


def test_gen_jax_evaluate_of_a_damaged_checkpoint_is_one_error_line_and_step_loads_another(
    workdir, mock_mnist, capsys
):
    truncate_state(workdir / "checkpoints" / "6")
    assert cli.main(["evaluate", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gen-jax: error: the checkpoint at step 6") and "--step" in err
    assert len(err.splitlines()) == 1
    assert cli.main(["evaluate", str(workdir), "--step", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 4


def test_gen_jax_sample_of_a_damaged_checkpoint_is_one_error_line(
    tiny_run, tmp_path, mock_mnist, capsys
):
    run = copied_run(tiny_run("gan"), tmp_path / "gan")
    latest = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    truncate_state(run / "checkpoints" / str(latest))
    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(run), "--num", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("gen-jax: error:")]
    assert (
        error.startswith(f"gen-jax: error: the checkpoint at step {latest}") and "--step" in error
    )
    assert "Traceback" not in err and not out.exists()
