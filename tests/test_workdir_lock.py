"""One trainer per workdir (`workdir_lock`): a second one stops at once naming the first, a lock
left by a killed process is taken over, one left by another host needs `--break_lock`, and
readers never wait."""

import json
import socket
import subprocess
import sys

import pytest

from gen_jax import cli, workdir_lock
from gen_jax.workdir_lock import LOCK_FILE, WorkdirLocked
from tests.helpers.processes import locked_by_another_process
from tests.helpers.runs import copied_run


@pytest.mark.slow
def test_a_second_trainer_stops_at_once_naming_the_first_and_readers_still_read(
    tiny_run, tmp_path, capsys, mock_mnist
):
    experiment = tiny_run("classifier").parent / "tiny.py"
    run = copied_run(tiny_run("classifier"), tmp_path / "run")
    fresh = tmp_path / "fresh"
    for workdir in (run, fresh):
        with locked_by_another_process(workdir) as holder:
            before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
            assert cli.main(["train", str(experiment), "--workdir", str(workdir)]) == 2
            error = capsys.readouterr().err
            assert f"is being trained by pid {holder.pid} on host {socket.gethostname()}" in error
            assert "Traceback" not in error
            after = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
            assert after == before  # nothing written: no config, no metrics, no checkpoint
            if workdir == run:  # a reader loads the newest committed checkpoint meanwhile
                assert cli.main(["evaluate", str(run)]) == 0
    assert sorted(p.name for p in fresh.iterdir()) == [LOCK_FILE]


def _left_by(workdir, host: str, pid: int) -> dict:
    """A lock file naming a holder whose flock is gone (a trainer killed with -9)."""
    workdir.mkdir(parents=True, exist_ok=True)
    holder = {"host": host, "pid": pid, "started": "2026-12-01T10:00:00+00:00"}
    (workdir / LOCK_FILE).write_text(json.dumps(holder) + "\n")
    return holder


def _holder(workdir) -> dict | None:
    text = (workdir / LOCK_FILE).read_text()
    return json.loads(text) if text else None


def test_a_lock_left_by_a_killed_trainer_on_this_host_is_taken_over_with_a_note(tmp_path, capsys):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(gone.stdout)
    _left_by(tmp_path, socket.gethostname(), pid)
    with workdir_lock.held(tmp_path):
        assert _holder(tmp_path)["pid"] != pid
    assert f"took over the lock of {tmp_path} from pid {pid}" in capsys.readouterr().err
    assert _holder(tmp_path) is None  # released: empty, never deleted


def test_a_lock_left_by_another_host_needs_break_lock(tmp_path, capsys):
    _left_by(tmp_path, "node-7", 4242)
    refused = pytest.raises(WorkdirLocked, match=r"pid 4242 on host node-7.*--break_lock")
    with refused, workdir_lock.held(tmp_path):
        pytest.fail("the lock was taken")
    assert _holder(tmp_path)["host"] == "node-7"  # refused: nothing changed
    with workdir_lock.held(tmp_path, break_lock=True):
        assert _holder(tmp_path)["host"] == socket.gethostname()
    assert "from pid 4242 on host node-7" in capsys.readouterr().err


def test_a_lock_is_released_when_training_raises(tmp_path):
    with pytest.raises(RuntimeError), workdir_lock.held(tmp_path):
        raise RuntimeError("a step failed")
    with workdir_lock.held(tmp_path):  # no note, no error: nobody holds it
        pass
    assert _holder(tmp_path) is None
