"""The training loop every task runs: data -> sharded, compiled step -> logs, evals, checkpoints."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gen_jax import config as config_lib
from gen_jax import data, parallel, tasks
from gen_jax.checkpoint import Checkpointer
from gen_jax.errors import NonFiniteLossError
from gen_jax.metric_writer import MetricWriter, progress_bar
from gen_jax.tasks.base import Task, average


# ----------------------------------------------------------------------------- compiled steps
def compile_train_step(task: Task, mesh: Mesh):
    """`task.train_step` under jit: batch sharded on `data`, state replicated and donated."""
    state, batch = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(
        task.train_step, in_shardings=(state, batch), out_shardings=(state, state), donate_argnums=0
    )


def compile_eval_step(task: Task, mesh: Mesh):
    """`task.eval_step` under jit, returning replicated per-batch sums."""
    state, batch = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(task.eval_step, in_shardings=(state, batch), out_shardings=state)


def evaluate(
    eval_step, state: Any, arrays: data.Batch, config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, float]:
    """Mean eval metrics over a whole split (every example counted exactly once)."""
    sums = None
    for local in data.eval_batches(
        arrays,
        batch_size=config.data.eval_batch_size,
        preprocess=config.data.preprocess,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        metrics = eval_step(state, parallel.global_batch(local, mesh))
        sums = metrics if sums is None else jax.tree.map(np.add, sums, metrics)
    return {k: float(v) for k, v in average(jax.device_get(sums)).items()}


# ----------------------------------------------------------------------------- state
def example_batch(
    arrays: data.Batch, config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, jax.Array]:
    """One global training-shaped batch, used only for its shapes when building state."""
    local = next(
        data.eval_batches(
            arrays,
            batch_size=config.data.batch_size,
            preprocess=config.data.preprocess,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    local.pop("mask")
    return parallel.global_batch(local, mesh)


def initial_state(
    task: Task,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    batch: dict,
    checkpointer: Checkpointer,
    iterator=None,
    step: int | None = None,
    require: bool = False,
):
    """Restore the latest (or given) checkpoint if there is one, else initialise from the seed.

    With `require`, a workdir without checkpoints is an error instead of a fresh start.
    """
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(task.init, rng, batch)
    if checkpointer.latest_step() is None and not require:
        return jax.jit(task.init, out_shardings=parallel.replicated(mesh))(rng, batch), iterator
    return checkpointer.restore(parallel.replicate(abstract, mesh), iterator, step)


# ----------------------------------------------------------------------------- loop
def run(
    config: ml_collections.ConfigDict, workdir: str | Path, stop_at: int | None = None
) -> dict[str, float]:
    """Train (or resume) the experiment `config` in `workdir`; return the last eval metrics.

    `stop_at` ends this invocation after that step with a checkpoint (for time-sliced jobs);
    running again continues exactly as if it had never stopped.
    """
    workdir = Path(workdir)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    task = tasks.build(config)
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)

    train_arrays = data.load_split(config.data, config.data.train_split)
    eval_arrays = data.load_split(config.data, config.data.eval_split)
    iterator = data.train_iterator(
        train_arrays,
        batch_size=config.data.batch_size,
        seed=config.seed,
        preprocess=config.data.preprocess,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    checkpointer = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    state, iterator = initial_state(
        task, config, mesh, example_batch(train_arrays, config, mesh), checkpointer, iterator
    )
    if is_main:  # only now: a workdir refused above keeps the config it was made with
        config_lib.save(config, workdir / "config.json")
    train_step, eval_step = compile_train_step(task, mesh), compile_eval_step(task, mesh)
    writer = MetricWriter(workdir, enabled=is_main)
    try:
        return _train_loop(
            config,
            mesh,
            state,
            iterator,
            train_step,
            checkpointer,
            writer,
            eval_step,
            eval_arrays,
            stop_at,
        )
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.close()


def _train_loop(
    config, mesh, state, iterator, train_step, checkpointer, writer, eval_step, eval_arrays, stop_at
):
    train = config.train
    start = int(state.step)
    end = min(train.num_steps, stop_at or train.num_steps)
    pending: list[dict] = []  # device metrics of steps not yet fetched
    window: list[dict] = []  # host metrics of steps since the last log
    window_start = time.perf_counter()
    bar = progress_bar(train.num_steps, start, enabled=jax.process_index() == 0)
    final = {}
    for step in range(start + 1, end + 1):
        state, metrics = train_step(state, parallel.global_batch(next(iterator), mesh))
        pending.append(metrics)
        bar.update(1)
        if step == start + 1:
            jax.block_until_ready(metrics)
            writer.write(step, "train", {"first_step_seconds": time.perf_counter() - window_start})
        is_last = step == train.num_steps
        log_now = step % train.log_every == 0 or step == end
        eval_now = (train.eval_every and step % train.eval_every == 0) or is_last
        save_now = step % train.checkpoint_every == 0 or step == end
        if not (log_now or eval_now or save_now):
            continue
        window += _fetch_checked(pending, first_step=step - len(pending) + 1)
        pending = []
        if log_now:
            elapsed = time.perf_counter() - window_start
            means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            means["steps_per_second"] = len(window) / elapsed
            means["examples_per_second"] = len(window) * config.data.batch_size / elapsed
            writer.write(step, "train", means)
            bar.set_postfix(loss=f"{means['loss']:.4f}")
            window, window_start = [], time.perf_counter()
        if eval_now:
            final = evaluate(eval_step, state, eval_arrays, config, mesh)
            writer.write(step, config.data.eval_split, final)
        if save_now:
            checkpointer.save(step, state, iterator)
    bar.close()
    if start >= end:  # nothing left to train: report the checkpoint as it is
        final = evaluate(eval_step, state, eval_arrays, config, mesh)
        writer.write(start, config.data.eval_split, final)
    return final


def _fetch_checked(pending: list[dict], first_step: int) -> list[dict]:
    """Copy per-step metrics to the host; stop the run at the first non-finite loss."""
    host = jax.device_get(pending)
    for offset, metrics in enumerate(host):
        if not math.isfinite(float(metrics["loss"])):
            raise NonFiniteLossError(first_step + offset, {k: float(v) for k, v in metrics.items()})
    return host


def load_state(workdir: str | Path, step: int | None = None):
    """A run's config, task, mesh and restored state (latest or given step) on these devices."""
    workdir = Path(workdir)
    config = config_lib.load(workdir / "config.json")
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    task = tasks.build(config)
    arrays = data.load_split(config.data, config.data.eval_split)
    checkpointer = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    try:
        batch = example_batch(arrays, config, mesh)
        state, _ = initial_state(task, config, mesh, batch, checkpointer, step=step, require=True)
    finally:
        checkpointer.close()
    return config, task, mesh, state


def evaluate_workdir(workdir: str | Path, step: int | None = None) -> dict[str, float]:
    """Evaluate a run's latest (or given) checkpoint on its eval split, with the run's config."""
    config, task, mesh, state = load_state(workdir, step)
    arrays = data.load_split(config.data, config.data.eval_split)
    metrics = evaluate(compile_eval_step(task, mesh), state, arrays, config, mesh)
    return {"step": int(state.step), **metrics}
