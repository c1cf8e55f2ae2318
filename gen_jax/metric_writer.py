"""Where metrics go: `metrics.jsonl`, TensorBoard event files, and a terminal progress bar."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from gen_jax import images
from gen_jax.atomic import write_text_atomically


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
