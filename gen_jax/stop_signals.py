"""A clean stop on SIGINT (Ctrl-C) or SIGTERM (how schedulers announce a preemption): the run
finishes the compiled call under way, saves a checkpoint at its step and stops, so the same
command resumes it, bitwise as if it had never stopped.

A single process catches both signals itself. The processes of a `jax.distributed` run must stop
after the same call: JAX's preemption service, which takes SIGTERM over in each of them, agrees on
that call through the coordination service, and a Ctrl-C is handed to it as a SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class StopSignals:
    """While entered, SIGINT and SIGTERM ask the training loop to stop (`requested`) instead of
    ending the process at once; a second one ends it at once, as it would have without this."""

    def __init__(self):
        self.received: signal.Signals | None = None  # the first signal caught in this process
        self.multi_process = jax.process_count() > 1
        self._previous: dict[signal.Signals, object] = {}  # the handlers to put back

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python's only signal thread
            # JAX's preemption service has SIGTERM in a multi-process run: keep it
            caught = [signal.SIGINT] + ([] if self.multi_process else [signal.SIGTERM])
            self._previous = {s: signal.signal(s, self._handle) for s in caught}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        number = signal.Signals(number)
        if self.received is not None:  # the second: what the signal did before, now
            signal.signal(number, self._previous.pop(number))
            signal.raise_signal(number)
            return
        self.received = number
        print(
            f"\ngen-jax: {number.name}: stopping after the step under way, with a checkpoint "
            "(send it again to stop at once, without one)",
            file=sys.stderr,
            flush=True,
        )
        if self.multi_process:  # to JAX's preemption service, which tells the other processes
            signal.raise_signal(signal.SIGTERM)

    def requested(self, call: int) -> bool:
        """Whether the run stops after the compiled call numbered `call` (from 1 in this
        invocation: every process of a run counts the same calls)."""
        if self.multi_process:
            return multihost_utils.reached_preemption_sync_point(call)
        return self.received is not None

    def exit_status(self) -> int:
        """The shell's status for a process ended by the signal (128 + its number): SIGTERM's
        in a multi-process run, where a signal to any process stops them all."""
        return 128 + (self.received or signal.SIGTERM)
