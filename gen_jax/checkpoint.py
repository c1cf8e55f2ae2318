"""Checkpoints: train state and data-iterator position saved together by one orbax manager.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it when
complete), so a run killed at any moment leaves only finished checkpoints behind; unfinished
temporary directories are removed when the next run opens the workdir to train; opening it only
to read (evaluate, sample, score in a classifier's features) leaves them, so it never breaks a
save that is still being written.

A committed checkpoint whose files were damaged later (truncated by a full disk, overwritten,
missing) raises a `DamagedCheckpointError` naming its step and what failed; the training run
moves it aside (`Checkpointer.move_aside`) and resumes from an older one (`workdir.resume`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gen_jax import parallel
from gen_jax.errors import GenJaxError


class DamagedCheckpointError(GenJaxError):
    """A finished checkpoint whose files cannot be read back; `step` is its step and `reason`
    says which item failed and how (orbax's innermost error, which names the file or array)."""

    def __init__(self, directory: Path, step: int, reason: str, other_steps: list[int]):
        self.step, self.reason = step, reason
        if other_steps:
            remedy = (
                f"Load another one with --step N (gen-jax evaluate, sample) or step=N (load_run): "
                f"it holds steps {other_steps}. `gen-jax train` in this workdir resumes from the "
                "newest checkpoint that restores, moving damaged newer ones aside."
            )
        else:
            remedy = "It is the only checkpoint; nothing was moved or deleted."
        super().__init__(
            f"the checkpoint at step {step} in {directory} cannot be read, its files are damaged "
            f"({reason}). {remedy}"
        )


class PositionMismatch(Exception):
    """A checkpoint's data position was saved by another kind of pipeline (in memory or
    streamed, other worker counts): whole, but with other fields."""


def _innermost(error: BaseException) -> BaseException:
    """The error orbax wrapped (it names the file or array)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _out_of_space(error: BaseException) -> bool:
    """A write that failed for want of space; tensorstore's errors carry the errno as text."""
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
        return True
    return any(f"os_error_code='{code}'" in str(error) for code in OUT_OF_SPACE)


def _position_mismatch(error: BaseException) -> bool:
    """What grain raises for a whole position of another pipeline (a damaged file is a JSON
    decode error or a missing file instead)."""
    mismatch = isinstance(error, KeyError | ValueError | TypeError | IndexError)
    return mismatch and not isinstance(error, json.JSONDecodeError | UnicodeDecodeError)


class Checkpointer:
    """Saves and restores `(state, data iterator)` pairs under `directory`.

    With `max_to_keep` it is the run's writer (keeps that many, clears unfinished saves of an
    earlier process); without, a reader that changes nothing on disk.
    """

    def __init__(self, directory: Path, max_to_keep: int | None = None):
        writer = max_to_keep is not None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=writer, cleanup_tmp_directories=writer
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=options, item_handlers=handlers
        )
        self.state_bytes = 0  # of the last save: what a checkpoint needs, roughly

    def latest_step(self) -> int | None:
        """The step of the newest finished checkpoint, or None if there is none."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, iterator: grain.DatasetIterator) -> None:
        """Start an asynchronous save; the iterator position is captured now."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
        )
        self.state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        with self._writing():  # a failure of the save before it shows here
            self.manager.save(step, args=args)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a save that failed for want of space (a full disk, a quota, a file-size limit)
        into one error naming the directory, the bytes a checkpoint needs and the last complete
        checkpoint, after removing the unfinished save (process 0)."""
        try:
            yield
        except Exception as error:
            cause = _innermost(error)
            if not _out_of_space(cause):
                raise
            directory = Path(self.manager.directory)
            if jax.process_index() == 0:  # every process failed to write its part of it
                for unfinished in directory.glob("*.orbax-checkpoint-tmp*"):
                    shutil.rmtree(unfinished, ignore_errors=True)
            last = latest_step(directory)
            kept = (
                "none is complete yet" if last is None else f"the last complete one is step {last}"
            )
            detail = " ".join(str(cause).rsplit('": ', 1)[-1].split())  # after the file name
            raise GenJaxError(
                f"saving a checkpoint in {directory} failed for want of space ({detail}). "
                f"A checkpoint needs about {self.state_bytes / 2**20:.1f} MiB; {kept}, and "
                "process 0 removed the unfinished save. Free space there (or raise the quota), "
                "then rerun the same command to resume."
            ) from error

    def restore(
        self,
        abstract_state: Any,
        iterator: grain.DatasetIterator | None = None,
        step: int | None = None,
    ) -> tuple[Any, grain.DatasetIterator | None]:
        """Restore `step` (default: latest) into arrays shaped and sharded like `abstract_state`,
        and the data position into `iterator`; None for the iterator where the position was
        saved by another kind of pipeline, which the caller rebuilds from the step."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise GenJaxError(f"no checkpoint in {self.manager.directory}")
        saved = self.all_steps()
        if step not in saved:
            raise GenJaxError(
                f"no checkpoint at step {step} in {self.manager.directory}; it holds steps {saved}"
            )
        state = self._read(step, "state", lambda: self._restore_state(step, abstract_state))
        if iterator is None:
            return state, None
        args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator))
        try:
            restored = self._read(step, "data", lambda: self.manager.restore(step, args=args))
        except PositionMismatch:
            return state, None
        return state, restored["data"]

    def _restore_state(self, step: int, abstract_state: Any) -> Any:
        saved_state = self.manager.item_metadata(step)["state"]
        if saved_state is None:
            raise FileNotFoundError("its _METADATA (the list of saved arrays) is missing")
        self._check_shapes(step, saved_state, abstract_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        return self.manager.restore(step, args=args)["state"]

    def _read(self, step: int, item: str, read: Callable[[], Any]) -> Any:
        """`read()` of `item` of the finished `step`, told apart by what it raises:
        - a GenJaxError (a checkpoint that does not fit the config) goes on as it is;
        - running out of memory is not damage: an error that says so;
        - a data position saved by another kind of pipeline: `PositionMismatch`;
        - anything else is retried once (a passing read error), then is damage, a
          `DamagedCheckpointError`, which `gen-jax train` answers by moving it aside."""
        for attempt in (1, 2):
            try:
                return read()
            except GenJaxError:
                raise
            except Exception as error:
                cause = _innermost(error)
                if _out_of_memory(cause):
                    raise GenJaxError(
                        f"restoring the checkpoint at step {step} in {self.manager.directory} "
                        f"ran out of memory ({type(cause).__name__}); the checkpoint is not "
                        "damaged. Free memory (other jobs) or use a machine with more."
                    ) from error
                if item == "data" and _position_mismatch(cause):
                    raise PositionMismatch() from error
                if attempt == 1:
                    continue
                message = " ".join(str(cause).split())[:400]
                reason = f"{step}/{item}: {type(cause).__name__}: {message}"
                others = [s for s in self.all_steps() if s != step]
                raise DamagedCheckpointError(
                    self.manager.directory, step, reason, others
                ) from error
        raise AssertionError("unreachable")

    def _check_shapes(self, step: int, saved_state: Any, abstract_state: Any) -> None:
        """Refuse, with the differing entries named, a checkpoint that does not fit the config."""
        saved_leaves = _leaf_shapes(saved_state)
        expected_leaves = _leaf_shapes(abstract_state)
        problems = []
        for name in sorted(set(saved_leaves) | set(expected_leaves)):
            if name not in saved_leaves:
                problems.append(f"{name}: not in the checkpoint")
            elif name not in expected_leaves:
                problems.append(f"{name}: in the checkpoint but not in this config's state")
            elif saved_leaves[name] != expected_leaves[name]:
                problems.append(
                    f"{name}: checkpoint {saved_leaves[name]}, config {expected_leaves[name]}"
                )
        if problems:
            listed = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
            raise GenJaxError(
                f"the checkpoint at step {step} in {self.manager.directory} does not fit this "
                f"config ({len(problems)} difference(s)):\n  {listed}\n"
                "Use a new --workdir for a different model, or the config this workdir was made "
                "with (its config.json)."
            )

    def move_aside(self, step: int, folder: Path) -> Path | None:
        """Move the checkpoint `step` (damaged, or set aside) into `folder`, never deleting it,
        where this manager neither lists, restores nor cleans it up. Process 0 moves it and
        returns where it went (FOLDER/STEP, or FOLDER/STEP.N if taken); the other processes wait
        for it (None)."""
        target = None
        if jax.process_index() == 0:
            target, copies = Path(folder) / str(step), 1
            while target.exists():
                copies += 1
                target = Path(folder) / f"{step}.{copies}"
            target.parent.mkdir(parents=True, exist_ok=True)
            Path(self.manager.directory / str(step)).rename(target)
        ocp.multihost.sync_global_processes(f"gen_jax_move_aside_{step}")
        self.manager.reload()
        return target

    def all_steps(self) -> list[int]:
        """The steps of all finished checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def wait(self) -> None:
        """Block until pending asynchronous saves are finished.

        In a multi-process run the processes first poll each other every 50 ms with a
        collective, which fails at once if one of them is gone; orbax's own wait would block on
        a barrier until the heartbeat timeout and then abort the process.
        """
        while jax.process_count() > 1:
            saving = np.int32(self.manager.is_saving_in_progress())
            if not multihost_utils.process_allgather(saving).any():
                break
            time.sleep(0.05)
        with self._writing():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._writing():
            self.manager.close()


def latest_step(directory: Path) -> int | None:
    """The step of the newest finished checkpoint in `directory` (None if none), for callers
    that only ask whether a run got that far. It reads the directory alone, with no checkpoint
    manager: that would wait for the other processes of a run, which may be gone."""
    return max(ocp.path.step.checkpoint_steps(directory), default=None)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf shapes by a path string that reads the same for saved metadata and live dataclasses."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {parallel.leaf_name(path): tuple(leaf.shape) for path, leaf in leaves}
