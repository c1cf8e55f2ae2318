"""Where metrics go: `metrics.jsonl`, TensorBoard event files, and a terminal progress bar; and
`TrainLog`, the training loop's per-step metrics, averaged per logging window."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from gen_jax import images
from gen_jax.atomic import write_text_atomically
from gen_jax.errors import NonFiniteLossError


class MetricWriter:
    """Appends one JSON object per (step, split, name, value, time) and mirrors it to TensorBoard.

    A run starting at `start_step` (its checkpoint, or 0) first drops the records an interrupted
    process wrote after that step (they are written again), from both. Only process 0 writes; on
    other processes every method does nothing.
    """

    def __init__(self, workdir: Path, enabled: bool = True, start_step: int = 0):
        self.enabled, self.workdir = enabled, Path(workdir)
        if enabled:
            path = self.workdir / "metrics.jsonl"
            if path.exists():
                _keep_records_up_to(path, start_step)
            self.jsonl = open(path, "a")  # noqa: SIM115 (closed in close)
            self.tensorboard = SummaryWriter(  # TensorBoard hides the later events too
                str(self.workdir / "tensorboard"), purge_step=start_step + 1
            )

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        for name, value in sorted(metrics.items()):
            record = {"step": step, "split": split, "name": name, "value": value, "time": now}
            self.jsonl.write(json.dumps(record) + "\n")
            self.tensorboard.add_scalar(f"{split}/{name}", value, step, walltime=now)
        self.jsonl.flush()
        self.tensorboard.flush()

    def write_images(self, step: int, layouts: dict[str, np.ndarray]) -> None:
        """Save each (rows, columns, H, W, C) layout as samples/NAME_STEP.png and to TensorBoard."""
        if not self.enabled:
            return
        for name, layout in layouts.items():
            image = images.grid(layout)
            images.save_png(image, self.workdir / "samples" / f"{name}_{step:07d}.png")
            self.tensorboard.add_image(f"samples/{name}", image, step, dataformats="HWC")
        self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm.tqdm:
    """Steps with rate and ETA on a terminal; silent otherwise."""
    return tqdm.tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def _keep_records_up_to(path: Path, step: int) -> None:
    """Rewrite `metrics.jsonl` without records after `step`, atomically (a crash keeps the old)."""
    with open(path) as f:
        kept = [line for line in _whole_lines(f) if json.loads(line)["step"] <= step]
    write_text_atomically(path, "".join(kept))


def read_metrics(workdir: Path) -> list[dict]:
    """All records of a run's `metrics.jsonl`."""
    with open(Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in _whole_lines(f)]


def logged_metrics(workdir: Path, step: int, split: str) -> dict[str, float]:
    """The metrics of `split` a run recorded at `step` ({} if none)."""
    if not (Path(workdir) / "metrics.jsonl").exists():
        return {}
    records = read_metrics(workdir)
    return {r["name"]: r["value"] for r in records if r["step"] == step and r["split"] == split}


def _whole_lines(lines: Iterable[str]) -> list[str]:
    """The lines, less a last one that a kill cut off while it was being written."""
    return [line for line in lines if line.endswith("\n")]


class TrainLog:
    """Per-step train metrics: kept on device until needed, checked for divergence, averaged
    over each logging window, with the time of the first call (`first_step_seconds`: what is
    left of its compile, which starts in the background, and the steps) and of the whole
    start-up up to its end (`startup_seconds`, from `started`), and a progress bar."""

    def __init__(
        self, writer: MetricWriter, batch_size: int, start: int, total: int, started: float
    ):
        self.writer, self.batch_size, self.start, self.started = writer, batch_size, start, started
        self.pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched
        self.window: list[dict] = []  # host metrics since the last write
        self.window_start = time.perf_counter()
        self.bar = progress_bar(total, start, enabled=writer.enabled)

    def record(self, step: int, metrics: dict) -> None:
        """Keep the metrics of the steps up to `step` (a leading axis, one row per step)."""
        if step - len(metrics["loss"]) == self.start:  # the first call
            jax.block_until_ready(metrics)
            now = time.perf_counter()
            seconds = {"first_step_seconds": now - self.window_start}
            self.writer.write(step, "train", {**seconds, "startup_seconds": now - self.started})
        self.pending.append((step, metrics))
        self.bar.update(len(metrics["loss"]))

    def check_finite(self) -> None:
        """Fetch pending metrics; stop the run at the first step whose loss is not finite."""
        for last, metrics in jax.device_get(self.pending):
            count = len(metrics["loss"])
            for row in range(count):
                values = {k: float(v[row]) for k, v in metrics.items()}
                if not math.isfinite(values["loss"]):
                    raise NonFiniteLossError(last - count + 1 + row, values)
                self.window.append(values)
        self.pending = []

    def write(self, step: int) -> None:
        """Write the window's mean metrics and throughput, then start a new window."""
        elapsed = time.perf_counter() - self.window_start
        means = {k: float(np.mean([m[k] for m in self.window])) for k in self.window[0]}
        means["steps_per_second"] = len(self.window) / elapsed
        means["examples_per_second"] = len(self.window) * self.batch_size / elapsed
        self.writer.write(step, "train", means)
        self.bar.set_postfix(loss=f"{means['loss']:.4f}")
        self.window, self.window_start = [], time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside out of the current window's throughput."""
        start = time.perf_counter()
        yield
        self.window_start += time.perf_counter() - start

    def close(self) -> None:
        self.bar.close()
