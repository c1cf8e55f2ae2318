"""The one exception type users see: a message that says what went wrong and what to do."""


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
