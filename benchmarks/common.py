"""What the benchmark scripts share: an experiment's config, its task built as `gen-jax train`
builds it, a split's arrays, and one timer.

The scripts import it as `from common import ...` (this folder is on `sys.path` when a script in
it runs; `child_env` puts it there for the `python -c` children). Nothing is imported from jax
or gen_jax at the top: inception_speed.py's torch worker runs this under a Python without them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ml_collections
    import numpy as np

    from gen_jax.compiled import RunParts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def experiment(
    name_or_path: str | Path, overrides: Sequence[str] = (), data_dir: str | None = None
) -> ml_collections.ConfigDict:
    """An experiment's config (`experiments/NAME.py`, or a .py file's), its `data.data_dir` set
    (None: the file's), then `--config.KEY=VALUE` overrides applied as `gen-jax train` does."""
    from gen_jax import config as config_lib

    path = Path(name_or_path)
    if path.suffix != ".py":
        path = REPO / "experiments" / f"{name_or_path}.py"
    config = config_lib.load_experiment(path)
    if data_dir is not None:
        config.data.data_dir = data_dir
    config_lib.apply_overrides(config, list(overrides))
    return config


def built(config: ml_collections.ConfigDict) -> RunParts:
    """What `gen-jax train` makes of `config` before the state: the config as a run records it
    (paths absolute, the model fitted to the data), the task, the mesh and the example batch
    a state is initialised from (`gen_jax.tasks.base.init_state(task, rng, batch)`), and that
    state's abstract, sharded layout."""
    from gen_jax import parallel, tasks, train
    from gen_jax import workdir as workdir_lib
    from gen_jax.compiled import run_parts

    config, source, _ = train.as_recorded(config)
    mesh = parallel.make_mesh(config.mesh)
    batch = workdir_lib.example_batch(source, config, mesh)
    return run_parts(tasks.build(config), config, mesh, batch)


def train_arrays(
    config: ml_collections.ConfigDict, split: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """A split's (the training split's by default) images, scaled as the experiment does (no
    random steps), and labels, in memory: what the PyTorch rows train on."""
    from gen_jax import data

    split = split or config.data.train_split
    arrays = data.preprocessor(config.data)(data.load_split(config.data, split))
    return arrays["image"], arrays["label"]


def timings(
    call: Callable[[], Any], repeats: int = 1, warmup: int = 0, back_to_back: bool = False
) -> list[float]:
    """Seconds of `call()` with its result waited for, after `warmup` untimed calls (waited for
    once, at the end): one time per call (latency; the first includes compiling if warmup=0),
    or with `back_to_back` one mean over `repeats` calls dispatched without waiting between
    them, the last waited for (throughput: JAX overlaps a call's dispatch with the previous
    call's work, as a training loop does)."""
    result = None
    for _ in range(warmup):
        result = call()
    _wait(result)
    if back_to_back:
        start = time.perf_counter()
        for _ in range(repeats):
            result = call()
        _wait(result)
        return [(time.perf_counter() - start) / repeats]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _wait(call())
        times.append(time.perf_counter() - start)
    return times


def _wait(result: Any) -> None:
    """Wait for JAX arrays in `result` (JAX dispatches asynchronously); anything else is ready.
    A process that never imported jax holds none (inception_speed.py's torch worker)."""
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.block_until_ready(result)


def child_env(**variables: str) -> dict[str, str]:
    """This process's environment with `variables` set and this folder first on PYTHONPATH:
    for a `python -c` child that imports common."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **variables, "PYTHONPATH": path}
