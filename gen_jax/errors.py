"""The exceptions users see: a message that says what went wrong (or why a run stopped) and
what to do."""

from pathlib import Path


class GenJaxError(Exception):
    """A user-facing error (bad config, missing data, unusable workdir, diverged run).

    The CLI prints its message without a traceback and exits with status 2.
    """


class NonFiniteLossError(GenJaxError):
    """Training produced a NaN or infinite loss; `step` is the first step that did."""

    def __init__(self, step: int, metrics: dict[str, float]):
        self.step = step
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        super().__init__(
            f"non-finite loss at step {step} ({shown}). The run stopped; the last checkpoint "
            "before it is intact. Lower the learning rate or check the data, then rerun the "
            "same command to resume from that checkpoint."
        )


class NonFiniteStateError(GenJaxError):
    """A step's update left NaN or infinite values in the state although its loss was finite (an
    overflowing gradient); found before that state would have been checkpointed."""

    def __init__(self, step: int, leaves: list[str], last_checkpoint: int | None):
        shown = ", ".join(leaves[:5]) + (f" and {len(leaves) - 5} more" if len(leaves) > 5 else "")
        if last_checkpoint is None:
            kept = "No checkpoint was saved before it"
        else:
            kept = f"The last checkpoint, step {last_checkpoint}, was saved before it and is intact"
        super().__init__(
            f"non-finite values in the state at step {step} ({shown}), although every loss up to "
            f"it was finite: an update overflowed. It was not saved. {kept}. Lower the learning "
            "rate or clip gradients, then rerun the same command to resume from that checkpoint."
        )


class PeerLostError(GenJaxError):
    """Another process of a multi-process run died or stopped answering, so this one stopped."""

    def __init__(self, cause: str, index: int, count: int, checkpoints: Path, step: int | None):
        gone = f"process {1 - index}" if count == 2 else f"one of the other {count - 1} processes"
        if step is None:
            saved = f"There is no complete checkpoint in {checkpoints} yet"
        else:
            saved = f"The last complete checkpoint in {checkpoints} is step {step}"
        super().__init__(
            f"{gone} of this {count}-process run is gone or stopped answering ({cause}), so "
            f"process {index} stopped too. {saved} (a save under way when it stopped is "
            "incomplete and is never restored). Run the same command again on every process to "
            "resume."
        )


class RunStopped(Exception):
    """A SIGINT or SIGTERM stopped training early, after a checkpoint (not an error: the CLI
    exits with `status`, the shell's for that signal, 128 + its number)."""

    def __init__(self, step: int, checkpoints: Path, status: int):
        self.status = status
        super().__init__(
            f"stopped by a signal at step {step}, saved in {checkpoints}. Run the same command "
            "again (on every process) to continue from there."
        )
