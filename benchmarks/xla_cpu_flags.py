"""Which XLA CPU flags and gen_jax settings speed up a compiled train step on this CPU?

    python benchmarks/xla_cpu_flags.py

Each row runs in a fresh process (XLA reads its flags once): the compiled train step of an
experiment (batch 128, one synthetic batch from host memory) timed over 100 steps after warm-up,
under XLA flags (none: gen_jax's own, `gen_jax.host`), with or without gen_jax's allocator
setting (`gen_jax.host.keep_freed_memory_in_heap`), with the batch split into
`train.batch_splits` concurrent slices. Prints a table of examples/s. (Several CPU devices are
left out: see benchmarks/README.md.)
"""

from __future__ import annotations

import subprocess
import sys

from common import child_env  # this folder; run as a script

from gen_jax.host import XLA_YNN_FUSIONS as XLA_DEFAULT  # XLA's own, which gen_jax replaces

VARIANTS = [  # (label, experiment, XLA_FLAGS, gen_jax's allocator setting, batch splits)
    ("XLA's defaults", "mnist_cnn", XLA_DEFAULT, False, 1),
    ("oneDNN", "mnist_cnn", f"{XLA_DEFAULT} --xla_cpu_use_onednn=true", False, 1),
    ("freed memory kept in heap", "mnist_cnn", XLA_DEFAULT, True, 1),
    ("heap + batch in 4 slices", "mnist_cnn", XLA_DEFAULT, True, 4),
    ("heap + batch in 8 slices", "mnist_cnn", XLA_DEFAULT, True, 8),
    ("heap + convolutions by XLA (gen_jax)", "mnist_cnn", "", True, 1),
    ("heap + convolutions by XLA + 4 slices", "mnist_cnn", "", True, 4),
    ("heap + convolutions by XLA + 8 slices", "mnist_cnn", "", True, 8),
    ("... by XLA on one thread", "mnist_cnn", "--xla_cpu_multi_thread_eigen=false", True, 1),
    ("XLA's defaults + heap", "mnist_vae", XLA_DEFAULT, True, 1),
    ("XLA's defaults + heap + 4 slices", "mnist_vae", XLA_DEFAULT, True, 4),
    ("heap + convolutions by XLA (gen_jax)", "mnist_vae", "", True, 1),
    ("heap + convolutions by XLA + 4 slices", "mnist_vae", "", True, 4),
]

STEP = """
import os
import jax, numpy as np
from common import experiment, timings
from gen_jax import compiled, data, host, parallel, tasks
from gen_jax.tasks.base import init_state

if os.environ["KEEP_FREED_MEMORY"] == "1":
    host.keep_freed_memory_in_heap()
config = experiment(os.environ["EXPERIMENT"])
config.train.batch_splits = int(os.environ["BATCH_SPLITS"])
task = tasks.build(config)
mesh = parallel.make_mesh()
rng = np.random.default_rng(0)
batch = {
    "image": rng.random((128, 28, 28, 1), np.float32),
    "label": rng.integers(0, 10, 128).astype(np.int32),
}
eval_split = data.InMemory(batch, data.DataSpec((28, 28, 1), tuple("0123456789"), True))
rng, replicated = jax.random.PRNGKey(0), parallel.replicated(mesh)
steps = compiled.compile_steps(task, config, mesh, replicated, eval_split)
state = init_state(task, rng, parallel.global_batch(batch, mesh), out_shardings=replicated)


def train():  # one step, the state carried on
    global state
    state, metrics = steps.train(state, [batch])
    return metrics


(seconds,) = timings(train, repeats=100, warmup=10, back_to_back=True)
print(128 / seconds)
"""


def measure(experiment: str, xla_flags: str, keep_freed_memory: bool, splits: int) -> float:
    env = child_env(
        XLA_FLAGS=xla_flags,
        EXPERIMENT=experiment,
        KEEP_FREED_MEMORY=str(int(keep_freed_memory)),
        BATCH_SPLITS=str(splits),
    )
    output = subprocess.check_output([sys.executable, "-c", STEP], env=env, text=True)
    return float(output.strip().splitlines()[-1])


def main() -> None:
    print("| experiment | variant | XLA_FLAGS | examples/s | ratio to the first row |")
    print("|---|---|---|---|---|")
    baselines = {}
    for label, experiment, flags, keep_freed_memory, splits in VARIANTS:
        rate = measure(experiment, flags, keep_freed_memory, splits)
        baseline = baselines.setdefault(experiment, rate)
        print(f"| {experiment} | {label} | `{flags}` | {rate:,.0f} | {rate / baseline:.2f} |")


if __name__ == "__main__":
    main()
