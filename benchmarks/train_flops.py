"""A recipe's training compute and how fast this machine does it: the train step's FLOPs (XLA's
cost analysis), times the recipe's steps, and the step's time and GFLOP/s here beside a float32
matmul's (benchmarks/speed.py's peak, the machine's compute limit), in this process.

    python benchmarks/train_flops.py experiments/cifar10_airbench.py [--steps 3] [--profile 20]
        [--config.data.batch_size=512 ...]

The step is the task's own (`task.train_step`, as `gen-jax train` compiles it, without the input
pipeline) on the example batch a run starts from, timed over `--steps` steps after one untimed
call. The estimated training time is the step's time here times the recipe's steps. With
`--profile N`, the same steps run again under `jax.profiler` and the N operations of the compiled
step that took longest are listed, each with its convolution or dot product (shapes, window),
which is where to look first.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
from common import built, experiment, timings  # this folder; run as a script
from speed import matmul_peak

from gen_jax.tasks.base import init_state


def top_operations(compiled, call, steps: int, count: int) -> list[tuple[float, str, str]]:
    """(ms per call, name, the convolution or dot inside it) of the `count` operations of the
    `compiled` program that took longest over `steps` traced calls of `call()`, which runs it."""
    hlo = compiled.as_text()
    operations = set(re.findall(r"\n\s*(?:ROOT )?%?([\w.-]+) = ", hlo))
    called = dict(re.findall(r"%?([\w.-]+) = [^\n]*? fusion\(.*?calls=%?([\w.-]+)", hlo))
    bodies = dict(re.findall(r"\n%?([\w.-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(call())
        (path,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as trace:
            events = json.load(trace)["traceEvents"]
    total = collections.Counter()
    for event in events:  # the step's operations, and the runtime's and Python's own spans
        if event.get("ph") == "X" and event.get("name") in operations:
            total[event["name"]] += event["dur"] / 1e3 / steps
    detail = r"window=\{[^}]*\}|lhs_contracting[^,]*"
    rows = []
    for name, ms in total.most_common(count):
        body = bodies.get(called.get(name, ""), "")
        found = re.findall(rf"= (\S+) (?:convolution|dot)\(.*?({detail})", body)
        rows.append((ms, name, "; ".join(f"{shape} {what}" for shape, what in found)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="an experiment file")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--profile", type=int, default=0, help="list this many longest ops")
    args, overrides = parser.parse_known_args()
    task, config, _, batch, _ = built(experiment(args.experiment, overrides))
    batch = {k: jnp.asarray(v) for k, v in jax.device_get(batch).items() if k in ("image", "label")}
    state = init_state(task, jax.random.PRNGKey(config.seed), batch)
    step = jax.jit(task.train_step).lower(state, batch).compile()
    cost = step.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]

    def train():  # one step, the state carried on
        nonlocal state
        state, metrics = step(state, batch)
        return metrics

    (seconds,) = timings(train, repeats=args.steps, warmup=1, back_to_back=True)
    peak, steps = matmul_peak(args)["gflops"], config.train.num_steps
    print(f"{args.experiment}, batch {config.data.batch_size}, {jax.devices()[0].device_kind}")
    print(
        "| GFLOP / step | steps | training PFLOP | s / step | GFLOP/s | matmul peak GFLOP/s "
        "| fraction of peak | estimated training h |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {flops / 1e9:.1f} | {steps} | {flops * steps / 1e15:.3f} | {seconds:.2f} | "
        f"{flops / seconds / 1e9:.0f} | {peak:.0f} | {flops / seconds / 1e9 / peak:.0%} | "
        f"{seconds * steps / 3600:.2f} |"
    )
    if args.profile:
        print(f"\n| ms / step (of {seconds * 1e3:.0f}) | operation | its convolution or dot |")
        print("|---|---|---|")
        rows = top_operations(step, lambda: step(state, batch), args.steps, args.profile)
        for ms, name, ops in rows:
            print(f"| {ms:.1f} | {name} | {ops} |")


if __name__ == "__main__":
    main()
