"""Summarise finished runs from their metrics.jsonl: the figures RESULTS.md reports.

    python benchmarks/run_summary.py runs/mnist_cnn runs/mnist_cnn_bn
    python benchmarks/run_summary.py runs/mnist_dcgan --metrics fid,inception_score,precision
    python benchmarks/run_summary.py runs/mnist_dcgan --metrics fid --history   # every evaluation

Prints one table row per workdir: the last evaluation's metrics, training wall time (first to
last record, so start-up before the first step is excluded), the median examples/s of the
logged windows after the first (which holds compilation; the median also ignores windows that
held an evaluation, in runs made before evaluations were left out of the timing), the time of
the first step (with what is left of its compile: runs since b259649 compile it in the
background while the data are decoded) and the start-up (from `train.run` to the first step's
metrics; blank for runs before b259649). `--history` prints every evaluation of each run instead.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from gen_jax.metric_writer import read_metrics


def summarise(workdir: Path) -> dict:
    """Last eval metrics, wall seconds, steady examples/s, first-step and start-up seconds."""
    records = read_metrics(workdir)

    def values(split: str, name: str) -> list[tuple[int, float]]:
        return [
            (r["step"], r["value"]) for r in records if r["split"] == split and r["name"] == name
        ]

    evals = [r for r in records if r["split"] != "train"]
    last_step = evals[-1]["step"]
    rates = values("train", "examples_per_second")
    return {
        "steps": max(r["step"] for r in records),
        "eval": {r["name"]: r["value"] for r in evals if r["step"] == last_step},
        "wall_seconds": records[-1]["time"] - records[0]["time"],
        "examples_per_second": statistics.median(v for _, v in rates[1:]),
        "first_step_seconds": values("train", "first_step_seconds")[0][1],
        "startup_seconds": next(iter(values("train", "startup_seconds")), (0, None))[1],
    }


def history(workdir: Path, shown: list[str] | None) -> None:
    """One row per evaluation of a run: step and the shown metrics."""
    by_step: dict[int, dict[str, float]] = {}
    for r in read_metrics(workdir):
        if r["split"] != "train" and (shown is None or r["name"] in shown):
            by_step.setdefault(r["step"], {})[r["name"]] = r["value"]
    names = shown or sorted({name for metrics in by_step.values() for name in metrics})
    print(f"| {workdir.name} step | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for step, metrics in sorted(by_step.items()):
        cells = (f"{metrics[n]:.4g}" if n in metrics else "—" for n in names)
        print(f"| {step} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--metrics", help="comma-separated eval metrics to show (default: all)")
    parser.add_argument("--history", action="store_true", help="every evaluation, not the last")
    args = parser.parse_args()
    shown = args.metrics.split(",") if args.metrics else None
    if args.history:
        for workdir in args.workdirs:
            history(workdir, shown)
        return
    print("| run | steps | last evaluation | wall time | examples/s | first step | start-up |")
    print("|---|---|---|---|---|---|---|")
    for workdir in args.workdirs:
        s = summarise(workdir)
        names = shown or sorted(s["eval"])
        metrics = ", ".join(f"{name} {s['eval'][name]:.4g}" for name in names if name in s["eval"])
        startup = "" if s["startup_seconds"] is None else f"{s['startup_seconds']:.2f} s"
        print(
            f"| {workdir.name} | {s['steps']} | {metrics} | "
            f"{s['wall_seconds'] / 60:.1f} min | {s['examples_per_second']:,.0f} | "
            f"{s['first_step_seconds']:.2f} s | {startup} |"
        )


if __name__ == "__main__":
    main()
