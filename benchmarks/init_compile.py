"""How long each experiment's `task.init` takes to compile at XLA's default -O3 and at the -O2 of
`gen_jax.tasks.base.init_state`, and whether the two draw the same parameters, bit for bit.

    python benchmarks/init_compile.py [EXPERIMENT ...]     # default: every file in experiments/

Each compilation runs in a fresh process (no compilation cache), on a batch of 8 zero images of
the experiment's dataset shape. Prints a table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import REPO, child_env  # this folder; run as a script

EXPERIMENTS = REPO / "experiments"

INIT = """
import hashlib, os
from pathlib import Path
import jax, numpy as np
from common import experiment, timings
from gen_jax import tasks
from gen_jax.data import DataSpec
from gen_jax.tasks.base import INIT_COMPILER_OPTIONS

path = os.environ["EXPERIMENT"]
config = experiment(path)
if "classifier_workdir" in config.task:
    config.task.classifier_workdir = ""  # the scores' classifier plays no part in init
shape = (32, 32, 3) if "cifar" in Path(path).name else (28, 28, 1)
tasks.fit_to_data(config, DataSpec(shape, tuple("0123456789"), True))
task = tasks.build(config)
batch = {"image": np.zeros((8, *shape), np.float32), "label": np.zeros(8, np.int32)}
options = INIT_COMPILER_OPTIONS if os.environ["LEVEL"] == "-O2" else {}
init = jax.jit(task.init, compiler_options=options)
(seconds,) = timings(lambda: init(jax.random.PRNGKey(0), batch))  # tracing and compiling too
state = init(jax.random.PRNGKey(0), batch)  # compiled above: the same program, the same bits
digest = hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(state)))
print(seconds, len(jax.tree.leaves(state)), digest.hexdigest())
"""


def measure(experiment: Path, level: str) -> tuple[float, int, str]:
    env = child_env(EXPERIMENT=str(experiment), LEVEL=level)
    output = subprocess.check_output([sys.executable, "-c", INIT], env=env, text=True)
    seconds, leaves, digest = output.strip().splitlines()[-1].split()
    return float(seconds), int(leaves), digest


def main() -> None:
    names = sys.argv[1:] or sorted(p.stem for p in EXPERIMENTS.glob("*.py"))
    print("| experiment | state leaves | init compile, -O3 (s) | -O2 (s) | ratio | same bits |")
    print("|---|---|---|---|---|---|")
    for name in names:
        (o3, leaves, bits_o3), (o2, _, bits_o2) = (
            measure(EXPERIMENTS / f"{name}.py", level) for level in ("-O3", "-O2")
        )
        same = "yes" if bits_o3 == bits_o2 else "**no**"
        print(f"| {name} | {leaves} | {o3:.2f} | {o2:.2f} | {o3 / o2:.1f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
