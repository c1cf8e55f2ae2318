"""Training throughput of the gen_jax loop against the plainest JAX loop, back to back.

    TFDS_DATA_DIR=../shared/data/tensorflow_datasets python benchmarks/train_throughput.py

Both train the baseline CNN (experiments/mnist_cnn.py: same network, SGD with momentum, batch 128)
on the real MNIST training set, each round of each loop in a fresh process, rounds alternating:

- gen_jax: `gen_jax.train.run` itself (grain pipeline, sharded step, metric fetches, a final
  checkpoint) with the process set-up `gen-jax train` does, timed over its logged windows after
  the first (which holds compilation);
- plain: the Flax example's style: decoded images in a numpy array, a fresh permutation per
  epoch, one jitted step per Python iteration;
- plain + allocator: the plain loop after gen_jax's one process setting
  (`host.keep_freed_memory_in_heap`), to show where a difference comes from.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax.training import train_state

from gen_jax import config as config_lib
from gen_jax import data, host, models, train
from gen_jax.metric_writer import read_metrics

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments/mnist_cnn.py"


def gen_jax_loop(config, steps: int, window: int) -> float:
    """Examples/s of `train.run` over `steps` steps after a first `window` (compilation)."""
    overrides = [
        f"--config.train.num_steps={steps + window}",
        f"--config.train.log_every={window}",
        f"--config.train.checkpoint_every={steps + window}",
    ]
    config = config.copy_and_resolve_references()
    config_lib.apply_overrides(config, overrides)
    with tempfile.TemporaryDirectory() as workdir:
        train.run(config, workdir)
        rates = [
            r["value"]
            for r in read_metrics(workdir)
            if r["name"] == "examples_per_second" and r["step"] > window
        ]
    return statistics.fmean(rates)


def plain_loop(config, arrays: data.Batch, steps: int, window: int) -> float:
    """Examples/s of a minimal loop: numpy batches from memory, one jitted step per iteration."""
    model = models.build(config.model)
    images = arrays["image"].astype(np.float32) / 255.0
    labels = arrays["label"]
    batch_size = config.data.batch_size
    params = model.init(jax.random.PRNGKey(0), images[:1])["params"]
    tx = optax.sgd(config.optimizer.learning_rate, momentum=config.optimizer.momentum)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, images, labels):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, images)
            one_hot = jax.nn.one_hot(labels, 10)
            return optax.softmax_cross_entropy(logits, one_hot).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        accuracy = (logits.argmax(-1) == labels).mean()
        return state.apply_gradients(grads=grads), loss, accuracy

    rng = np.random.default_rng(0)
    per_epoch = len(labels) // batch_size

    def batches():
        while True:
            order = rng.permutation(len(labels))
            for i in range(per_epoch):
                index = order[i * batch_size : (i + 1) * batch_size]
                yield images[index], labels[index]

    stream = batches()
    history = []  # per-step metrics kept on device, fetched at the end, as the Flax example does
    for _ in range(window):
        state, _, _ = train_step(state, *next(stream))
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, loss, accuracy = train_step(state, *next(stream))
        history.append((loss, accuracy))
    jax.device_get(history)
    return steps * batch_size / (time.perf_counter() - start)


LOOPS = ("gen_jax", "plain", "plain + allocator")


def measure(loop: str, args: argparse.Namespace) -> float:
    """Examples/s of one loop, timed in this process."""
    config = config_lib.load_experiment(EXPERIMENT)
    config.data.data_dir = args.data_dir
    if loop != "plain":
        host.keep_freed_memory_in_heap()
    if loop == "gen_jax":
        return gen_jax_loop(config, args.steps, args.window)
    arrays = data.load_split(config.data, config.data.train_split)
    return plain_loop(config, arrays, args.steps, args.window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="", help="TFDS directory (default $TFDS_DATA_DIR)")
    parser.add_argument("--steps", type=int, default=500, help="timed steps per round")
    parser.add_argument("--window", type=int, default=50, help="untimed warm-up steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=LOOPS, help="measure one loop here and print examples/s")
    args = parser.parse_args()
    if args.loop:
        print(measure(args.loop, args))
        return

    results = {loop: [] for loop in LOOPS}
    for _ in range(args.rounds):
        for loop in LOOPS:
            command = [sys.executable, __file__, "--loop", loop, *sys.argv[1:]]
            output = subprocess.check_output(command, text=True, stderr=subprocess.DEVNULL)
            results[loop].append(float(output.strip().splitlines()[-1]))

    baseline = statistics.median(results["plain"])
    print(
        f"CNN training, batch 128, {args.steps} timed steps per round, one device, "
        f"jax {jax.__version__}; each round of each loop in a fresh process"
    )
    print("| loop | examples/s per round | median | ratio to plain |")
    print("|---|---|---|---|")
    for loop, rates in results.items():
        median = statistics.median(rates)
        rounds = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {loop} | {rounds} | {median:,.0f} | {median / baseline:.3f} |")


if __name__ == "__main__":
    main()
