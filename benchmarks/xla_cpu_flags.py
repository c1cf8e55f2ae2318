"""Does an XLA CPU flag or gen_jax's allocator setting speed up the baseline CNN's train step?

    python benchmarks/xla_cpu_flags.py

Each row runs in a fresh process (XLA reads its flags once): the jitted train step of the
baseline CNN (batch 128, one synthetic batch from host memory) timed over 100 steps after
warm-up, with or without gen_jax's allocator setting (`gen_jax.host.keep_freed_memory_in_heap`).
Prints a table of examples/s. (Several CPU devices are left out: see benchmarks/README.md.)
"""

from __future__ import annotations

import os
import subprocess
import sys

VARIANTS = [  # (label, XLA_FLAGS, CPU devices, gen_jax's allocator setting)
    ("default", "", 1, False),
    ("oneDNN", "--xla_cpu_use_onednn=true", 1, False),
    ("XNNPACK", "--xla_cpu_use_xnnpack=true", 1, False),
    ("no multi-threaded Eigen", "--xla_cpu_multi_thread_eigen=false", 1, False),
    ("freed memory kept in heap", "", 1, True),
]

STEP = """
import os, time
import jax, numpy as np
from gen_jax import host, parallel, train
from gen_jax.config import base_config
from gen_jax.tasks.classifier import ClassifierTask

if os.environ["KEEP_FREED_MEMORY"] == "1":
    host.keep_freed_memory_in_heap()
config = base_config()
task = ClassifierTask(config)
mesh = parallel.make_mesh()
rng = np.random.default_rng(0)
batch = {
    "image": rng.random((128, 28, 28, 1), np.float32),
    "label": rng.integers(0, 10, 128).astype(np.int32),
}
steps = train.compile_steps(task, config, mesh, eval_arrays=batch)
init = jax.jit(task.init, out_shardings=parallel.replicated(mesh))
state = init(jax.random.PRNGKey(0), parallel.global_batch(batch, mesh))
for _ in range(10):
    state, metrics = steps.train(state, [batch])
jax.block_until_ready(metrics)
start = time.perf_counter()
for _ in range(100):
    state, metrics = steps.train(state, [batch])
jax.block_until_ready(metrics)
print(100 * 128 / (time.perf_counter() - start))
"""


def measure(xla_flags: str, devices: int, keep_freed_memory: bool) -> float:
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags,
        "JAX_NUM_CPU_DEVICES": str(devices),
        "KEEP_FREED_MEMORY": str(int(keep_freed_memory)),
    }
    output = subprocess.check_output([sys.executable, "-c", STEP], env=env, text=True)
    return float(output.strip().splitlines()[-1])


def main() -> None:
    print("| variant | XLA_FLAGS | CPU devices | examples/s | ratio to default |")
    print("|---|---|---|---|---|")
    baseline = None
    for label, flags, devices, keep_freed_memory in VARIANTS:
        rate = measure(flags, devices, keep_freed_memory)
        baseline = baseline or rate
        print(f"| {label} | `{flags}` | {devices} | {rate:,.0f} | {rate / baseline:.2f} |")


if __name__ == "__main__":
    main()
