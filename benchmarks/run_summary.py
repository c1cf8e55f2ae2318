"""Summarise finished runs from their metrics.jsonl: the figures RESULTS.md reports.

    python benchmarks/run_summary.py runs/mnist_cnn runs/mnist_cnn_bn

Prints one table row per workdir: final test accuracy, training wall time (first to last record,
so start-up before the first step is excluded), mean examples/s over the logged windows after the
first (which holds compilation), and the time of the first step (compilation included).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from gen_jax.metric_writer import read_metrics


def summarise(workdir: Path) -> dict[str, float]:
    """Final eval accuracy, wall seconds, steady examples/s and first-step seconds of a run."""
    records = read_metrics(workdir)

    def values(split: str, name: str) -> list[tuple[int, float]]:
        return [
            (r["step"], r["value"]) for r in records if r["split"] == split and r["name"] == name
        ]

    eval_split = next(r["split"] for r in records if r["split"] != "train")
    rates = values("train", "examples_per_second")
    return {
        "steps": max(r["step"] for r in records),
        "accuracy": values(eval_split, "accuracy")[-1][1],
        "wall_seconds": records[-1]["time"] - records[0]["time"],
        "examples_per_second": statistics.fmean(v for _, v in rates[1:]),
        "first_step_seconds": values("train", "first_step_seconds")[0][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | steps | test accuracy | wall time | examples/s | first step |")
    print("|---|---|---|---|---|---|")
    for workdir in args.workdirs:
        s = summarise(workdir)
        print(
            f"| {workdir.name} | {s['steps']} | {100 * s['accuracy']:.2f}% | "
            f"{s['wall_seconds'] / 60:.1f} min | {s['examples_per_second']:,.0f} | "
            f"{s['first_step_seconds']:.2f} s |"
        )


if __name__ == "__main__":
    main()
