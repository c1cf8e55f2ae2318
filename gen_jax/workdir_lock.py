"""One trainer per workdir: an exclusive lock that `gen-jax train` holds for the whole run.

The lock is `WORKDIR/trainer.lock`: an advisory `flock` on it, which the kernel drops when its
process dies however it dies, plus a line of JSON naming the holder (host, pid, start time). A
second trainer on the same host finds the flock taken and stops, naming the holder. A file that
still names a holder although its flock is free was left by a killed process: on the same host
that process is gone, so the lock is taken over with a note; from another host that cannot be
checked (flocks need not reach across network file systems), so it is an error that names the
holder and offers `--break_lock`. The file is emptied, never deleted, at release: deleting it
would let two processes lock two different files of the same name.

Readers (`evaluate`, `sample`, `load_run`) take no lock: they load the newest checkpoint that
was committed, which a running trainer never changes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from gen_jax.errors import GenJaxError

LOCK_FILE = "trainer.lock"


class WorkdirLocked(GenJaxError):
    """Another trainer holds the workdir, or may: the message names it and what to do."""


def _holder_text(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}"


def _read_holder(file) -> dict | None:
    """The holder the lock file names (None when it is empty or unreadable)."""
    file.seek(0)
    text = file.read().strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None  # a holder killed while it wrote: nobody to name
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def held(workdir: Path, break_lock: bool = False) -> Iterator[None]:
    """Hold `workdir`'s trainer lock inside the block; raise `WorkdirLocked` if another trainer
    holds it (see the module docstring). `break_lock` takes over a lock left by another host."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    file = open(path, "a+")  # noqa: SIM115 (closed below, which also drops the flock)
    try:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(file)
            named = (
                _holder_text(holder) if holder else "another process (it has not named itself yet)"
            )
            raise WorkdirLocked(
                f"{workdir} is being trained by {named}. One trainer per workdir: wait for it to "
                "finish or stop it (Ctrl-C or `kill PID` saves a checkpoint), or train with "
                "another --workdir. `gen-jax evaluate` and `gen-jax sample` can read it meanwhile."
            ) from None
        _take_over(file, path, _read_holder(file), break_lock)
        try:
            yield
        finally:
            file.truncate(0)  # released: the next trainer finds no holder to report
    finally:
        file.close()


@contextlib.contextmanager
def held_by_process_0(workdir: Path, break_lock: bool = False) -> Iterator[None]:
    """`held` by process 0 of a (multi-process) run, for all of them: every process stops when
    process 0 cannot take the lock, so none is left waiting for it in a collective."""
    refused: Exception | None = None
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            try:
                stack.enter_context(held(workdir, break_lock))
            except Exception as error:  # any: the others must hear of it, not wait
                refused = error
        agreed = (
            jax.process_count() == 1
            or multihost_utils.process_allgather(np.array(refused is None)).all()
        )
        if not agreed:
            refused = refused or WorkdirLocked(
                f"process 0 could not lock {workdir} for training; its message says why"
            )
        if refused is not None:
            raise refused
        yield


def _take_over(file, path: Path, left: dict | None, break_lock: bool) -> None:
    """Write this process as the holder, after checking a holder `left` in the file (whose
    flock is free)."""
    host = socket.gethostname()
    if left is not None:
        if left.get("host") != host and not break_lock:
            raise WorkdirLocked(
                f"{path} names {_holder_text(left)} as the trainer of this workdir. Its process "
                f"cannot be checked from {host}. If it no longer runs (killed, its host gone), "
                "pass --break_lock to take the workdir over; if it does, stop it first or train "
                "with another --workdir."
            )
        why = "on request (--break_lock)" if left.get("host") != host else "its process is gone"
        print(
            f"gen-jax: took over the lock of {path.parent} from {_holder_text(left)}: {why}",
            file=sys.stderr,
        )
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    file.seek(0)
    file.truncate(0)
    file.write(json.dumps({"host": host, "pid": os.getpid(), "started": started}) + "\n")
    file.flush()
    os.fsync(file.fileno())
