"""Streamed against in-memory training: examples/s and peak RSS of the same run both ways.

    python benchmarks/streaming.py [--experiment cifar10_cnn] [--rounds 2]

Each row trains `--window` + `--steps` steps of the experiment in a fresh process: "in memory"
holds the decoded training split in (device) memory and preprocesses inside the compiled step;
"streamed" (`data.streaming=True`) reads each batch from the array_record cache by index in
`data.workers` grain processes, which decode and augment it ahead of the step. Rows alternate
round by round; examples/s is the mean over the logged windows after the first (which holds
compilation), peak RSS the process's plus its largest worker's (`ru_maxrss`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

from speed import gen_jax_training  # this folder; run as a script

ROWS = {"in memory": [], "streamed": ["--config.data.streaming=true"]}


def train_row(args, overrides: list[str]) -> dict:
    """Train in this process (speed.py's timed run); examples/s and peak RSS in MiB."""
    quiet = ["--config.train.eval_every=0", "--config.optimizer.warmup_steps=0"]  # timed: steps
    result = gen_jax_training(args.experiment, args, *quiet, *overrides)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {**result, "peak_mib": (peak + workers) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="cifar10_cnn", help="a name in experiments/")
    parser.add_argument("--data_dir", default="", help="TFDS directory (default $TFDS_DATA_DIR)")
    parser.add_argument("--window", type=int, default=20, help="steps per logged window")
    parser.add_argument("--steps", type=int, default=60, help="timed steps after the first window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(train_row(args, ROWS[args.row])))
        return
    results = {row: [] for row in ROWS}
    for _ in range(args.rounds):
        for row in ROWS:
            command = [sys.executable, __file__, "--row", row, *sys.argv[1:]]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            if output.returncode:
                sys.exit(f"{row} failed:\n{output.stderr[-3000:]}")
            results[row].append(json.loads(output.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["examples_per_second"] for r in results["in memory"])
    print(f"{args.experiment}, {args.steps} timed steps, {args.rounds} rounds")
    print("| row | examples/s (median) | each round | vs in memory | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for row, runs in results.items():
        rates = [r["examples_per_second"] for r in runs]
        median = statistics.median(rates)
        each = ", ".join(f"{rate:,.0f}" for rate in rates)
        peak = max(r["peak_mib"] for r in runs)
        print(f"| {row} | {median:,.0f} | {each} | {median / base:.2f}x | {peak:,.0f} |")


if __name__ == "__main__":
    main()
