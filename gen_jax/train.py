"""The training loop every task runs: data -> sharded, compiled step -> logs, evals, checkpoints.

`run` checks the config against the devices and the data, locks the workdir, resumes or starts
the state (`workdir`), compiles the steps (`compiled`) and loops over them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gen_jax import checkpoint, compiled, data, parallel, provenance, tasks, workdir_lock
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.checkpoint import Checkpointer
from gen_jax.errors import GenJaxError, PeerLostError, RunStopped
from gen_jax.metric_writer import MetricWriter, TrainLog, logged_metrics
from gen_jax.stop_signals import StopSignals
from gen_jax.tasks.base import Task


def check_train_settings(train: ml_collections.ConfigDict, device_batch: int) -> None:
    """The train section's counts, before anything runs: at least one step, checkpoint kept,
    step per call and batch slice; the slices dividing each device's batch; periods of 0 (only
    at the end) or more."""
    for key in ("num_steps", "keep_checkpoints", "steps_per_call", "batch_splits"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise GenJaxError(f"train.{key} must be a positive integer, not {train[key]!r}")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        if train[key] < 0:
            raise GenJaxError(
                f"train.{key} must be 0 (only at the end) or a positive number of steps, not "
                f"{train[key]!r}"
            )
    if train.accumulate_gradients and train.batch_splits == 1:
        raise GenJaxError(
            "train.accumulate_gradients=True accumulates the gradients of train.batch_splits "
            "micro-batches, but train.batch_splits is 1; set it to the number of micro-batches "
            "(a divisor of each device's batch)"
        )
    if device_batch % train.batch_splits:
        raise GenJaxError(
            f"train.batch_splits={train.batch_splits} does not divide the {device_batch} examples "
            "each device gets per step (data.batch_size / devices); choose a divisor of it"
        )


# ----------------------------------------------------------------------------- loop
def run(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    stop_at: int | None = None,
    break_lock: bool = False,
    from_step: int | None = None,
    allow_change: bool = False,
) -> dict[str, float]:
    """Train (or resume) the experiment `config` in `workdir`; return the last eval metrics.

    `stop_at` ends this invocation with a checkpoint once that step is trained (after the
    compiled call that reaches it; for time-sliced jobs); running again continues exactly as if
    it had never stopped. `from_step` resumes from that older checkpoint, the newer ones moved
    to `set_aside_checkpoints/` (never deleted). Settings other than those the run was trained
    with are refused where they change what is trained (`resume_policy`), unless
    `allow_change`. The workdir is locked for the run
    (`workdir_lock`; `break_lock` takes over a lock another host left).
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    setup = checked_setup(config)  # before anything is written
    # signals from here on: one during the start-up stops the run after its first call
    with workdir_lock.held_by_process_0(workdir, break_lock), StopSignals() as signals:
        invocation = Invocation(stop_at, from_step, allow_change, started, signals)
        return _locked_run(setup, workdir, invocation)


class Invocation(NamedTuple):
    """How `run` was asked to train: `stop_at`, `from_step`, `allow_change` (its arguments),
    when it started (`time.perf_counter()`) and the stop signals it listens to."""

    stop_at: int | None
    from_step: int | None
    allow_change: bool
    started: float
    signals: StopSignals


class Setup(NamedTuple):
    """A run's checked config (paths absolute, shapes from the data), mesh, task and opened
    training split."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    task: Task
    source: data.Split


def checked_setup(config: ml_collections.ConfigDict) -> Setup:
    """Check the config against the devices and the data, and build the task: every refusal
    that needs no workdir, made before anything is written in it (opening a folder split may
    build its decoded cache, outside the workdir)."""
    mesh = parallel.make_mesh(config.mesh)
    sizes = {f"data.{key}": config.data[key] for key in ("batch_size", "eval_batch_size")}
    parallel.check_batch_sizes(sizes, mesh)
    check_train_settings(config.train, config.data.batch_size // mesh.devices.size)
    config, source, said = as_recorded(config)
    if said and jax.process_index() == 0:
        print(said, file=sys.stderr)
    check_batch_fits(config.data, source)
    return Setup(config, mesh, tasks.build(config), source)


def as_recorded(
    config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, data.Split, str]:
    """The config as a run records it (a copy): paths absolute, the model fitted to the data
    (`tasks.fit_to_data`) and the steps counted from `train.num_epochs` where that is set; the
    opened training split; and what the epochs made of the steps, to say ("" if nothing)."""
    config = config_lib.with_absolute_paths(config)
    source = data.open_split(config.data, config.data.train_split)  # decoded later
    tasks.fit_to_data(config, source.spec)
    said = config_lib.resolve_epochs(config.train, len(source), config.data.batch_size)
    return config, source, said


def check_batch_fits(data_config: ml_collections.ConfigDict, source: data.Split) -> None:
    """Refuse a training batch larger than the training split, and a batch whose float32
    images alone would exceed this host's memory (the kernel would kill the run unannounced)."""
    if data_config.batch_size > len(source):
        raise GenJaxError(
            f"data.batch_size={data_config.batch_size} is larger than the training split "
            f"'{data_config.train_split}' ({len(source)} examples); choose at most that"
        )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for key in ("batch_size", "eval_batch_size"):
        needed = data_config[key] * int(np.prod(source.spec.image_shape)) * 4
        if needed > memory:
            raise GenJaxError(
                f"data.{key}={data_config[key]} needs {needed / 2**30:.1f} GiB for its float32 "
                f"images alone, more than this host's {memory / 2**30:.1f} GiB of memory; "
                "choose a smaller batch"
            )


def _locked_run(setup: Setup, workdir: Path, invocation: Invocation) -> dict[str, float]:
    """`run`'s work, with the workdir locked."""
    config, mesh, task, source = setup
    from_step, allow_change = invocation.from_step, invocation.allow_change
    is_main = jax.process_index() == 0
    on_device = config.data.on_device and data.fits_in_memory(config.data, source)
    parts = compiled.run_parts(task, config, mesh, workdir_lib.example_batch(source, config, mesh))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    if from_step is not None:
        workdir_lib.check_from_step(checkpointer, from_step)
    start = checkpointer.latest_step() if from_step is None else from_step
    recorded = bool(start) and (workdir / "config.json").is_file()
    changed = {}
    if recorded and start < config.train.num_steps:  # before anything is decoded or compiled
        changed = workdir_lib.resume_changes(config, workdir, start, source.identity, allow_change)
    if from_step is not None:  # only now: a refused resume moves nothing
        workdir_lib.set_aside_after(checkpointer, from_step, workdir)
    pipeline = {  # this process's share of the training batches
        "seed": config.seed,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "indices_only": on_device,
    }
    local = data.train_batch_like(source, config.data, **pipeline)
    # compiled (and the state initialised) in the background while the data are decoded
    train_calls = compiled.compile_first_call(parts, source, local, on_device, start or 0)
    fresh = workdir_lib.fresh_state(parts) if start is None else None
    train_split = data.get_split(config.data, config.data.train_split)
    eval_split = data.get_split(config.data, config.data.eval_split)
    kind = data.iterator_kind(train_split, config.data, on_device)
    iterator = None  # a saved position restores only into an iterator of its own kind
    if start is None or workdir_lib.saved_iterator_kind(workdir) in (kind, None):
        iterator = data.train_iterator(train_split, config.data, **pipeline)
    state, iterator = workdir_lib.resume(parts, checkpointer, iterator, workdir, fresh)
    step = int(state.step)
    if iterator is None:  # batch n is step n's: the same batches from the step
        iterator = data.train_iterator(train_split, config.data, **pipeline, start=step)
        if is_main and step:
            saved = workdir_lib.saved_iterator_kind(workdir) or "an unrecorded kind"
            print(
                f"gen-jax: the data position saved at step {step} does not fit this pipeline "
                f"({kind}; saved by {saved}); "
                "resumed at the same batch from the step",
                file=sys.stderr,
            )
    if recorded and start >= config.train.num_steps > step:  # its last checkpoint was damaged
        changed = workdir_lib.resume_changes(config, workdir, step, source.identity, allow_change)
    finished = recorded and step >= config.train.num_steps
    if is_main and finished:  # nothing to train: config.json stays as it was trained
        workdir_lib.note_unapplied(config, workdir, step)
    if is_main and not finished:  # only now: a workdir refused above keeps its config
        workdir_lib.record_config(config, workdir, step, changed)
        provenance.record_training(workdir, step)
        splits = {"train": train_split, "eval": eval_split}
        workdir_lib.record_dataset(workdir, config.data, splits, kind)
    device_split = None
    if on_device:
        device_split = jax.device_put(train_split.arrays, parallel.replicated(mesh))
    layout = parallel.shardings_of(parts.state)
    steps = compiled.compile_steps(
        task, config, mesh, layout, eval_split, device_split, train_calls
    )
    writer = MetricWriter(workdir, enabled=is_main, start_step=int(state.step))
    peer_lost = False
    try:
        results = _loop(config, state, iterator, steps, checkpointer, writer, invocation)
        checkpointer.wait()  # in the try: a process lost in the last save is one lost in a step
        return results
    except Exception as error:  # only a lost process is caught; anything else goes on
        cause = parallel.lost_peer(error)
        if cause is None:
            raise
        peer_lost = True
        checkpoints = workdir / "checkpoints"
        step = checkpoint.latest_step(checkpoints)  # read from disk, with no other process
        index, count = jax.process_index(), jax.process_count()
        raise PeerLostError(cause, index, count, checkpoints, step) from error
    finally:
        if not peer_lost:  # closing waits for a save under way, which a lost process never ends
            checkpointer.close()
        writer.close()


def _loop(
    config, state, iterator, steps: compiled.Steps, checkpointer, writer, invocation: Invocation
) -> dict[str, float]:
    """Step from the state's step to `num_steps` (or `stop_at`): log, evaluate, checkpoint.
    `invocation.started`: when `run` began, for the start-up time.

    Steps go `train.steps_per_call` to a compiled call, except just before a logging, evaluation
    or checkpoint step, which single steps reach exactly. `stop_at` ends after the call that
    reaches it, so a stopped and resumed run makes the same calls as one that never stopped; a
    SIGINT or SIGTERM likewise ends after a call, with a checkpoint, raising `RunStopped`.
    """
    train, eval_split = config.train, config.data.eval_split
    stop_at, signals = invocation.stop_at, invocation.signals
    start = int(state.step)
    end = min(train.num_steps, stop_at or train.num_steps)
    if start >= end:  # nothing to train: report the evaluation logged here, made if it is due
        results = logged_metrics(writer.workdir, start, eval_split)  # every process reads it
        if not results and start == train.num_steps:
            results = steps.evaluate(state, final=True)
            writer.write(start, eval_split, results)
        return results
    log = TrainLog(writer, config.data.batch_size, start, train.num_steps, invocation.started)
    results = {}
    step, calls, stop = start, 0, False
    while step < end and not stop:
        count = compiled.call_size(step, train)
        state, metrics = steps.train(state, [next(iterator) for _ in range(count)])
        step, calls = step + count, calls + 1
        log.record(step, metrics)
        stop = signals.requested(calls)
        log_now = _due(step, train.log_every) or step >= end or stop
        eval_now = _due(step, train.eval_every) or step == train.num_steps
        save_now = _due(step, train.checkpoint_every) or step >= end or stop
        if log_now or eval_now or save_now:
            log.check_finite()  # before any save: a diverged state is never checkpointed
        if eval_now or save_now:  # nor evaluated
            workdir_lib.check_finite_state(state, step, checkpointer)
        if log_now:
            log.write(step)
        with log.paused():  # evaluations and saves do not count against training throughput
            if eval_now:
                results = steps.evaluate(state, final=step == train.num_steps)
                writer.write(step, eval_split, results)
                writer.write_images(step, steps.pictures(state))
            if save_now:
                checkpointer.save(step, state, iterator)
    log.close()
    if stop and step < end:  # `run` waits for the save as it closes the checkpointer
        raise RunStopped(step, checkpointer.manager.directory, signals.exit_status())
    return results


def _due(step: int, every: int) -> bool:
    """Whether an event repeated every `every` steps falls on `step` (never for 0: the loop adds
    the last step)."""
    return every > 0 and step % every == 0
