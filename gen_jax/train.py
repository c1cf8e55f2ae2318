"""The training loop every task runs: data -> sharded, compiled step -> logs, evals, checkpoints."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gen_jax import checkpoint, data, parallel, provenance, resume_policy, tasks, workdir_lock
from gen_jax import config as config_lib
from gen_jax.atomic import write_text_atomically
from gen_jax.checkpoint import Checkpointer, DamagedCheckpointError
from gen_jax.errors import (
    GenJaxError,
    NonFiniteLossError,
    NonFiniteStateError,
    PeerLostError,
    RunStopped,
)
from gen_jax.metric_writer import MetricWriter, logged_metrics, progress_bar
from gen_jax.stop_signals import StopSignals
from gen_jax.tasks.base import Task, init_state

# ----------------------------------------------------------------------------- compiled steps
PICTURE_INPUTS = 32  # the first eval images, shown in every evaluation's pictures


class Steps(NamedTuple):
    """The compiled functions a run calls: train steps, and a whole-split evaluation."""

    # (state, this process's next batches) -> (state, metrics with a leading step axis): one
    # step per batch, all in one compiled call
    train: Callable[[Any, list[data.Batch]], tuple[Any, dict]]
    evaluate: Callable[..., dict[str, float]]  # (state, final=False) -> eval metrics
    pictures: Callable[[Any], dict[str, np.ndarray]]  # state -> named image layouts


def one_step(task: Task, prepare: Callable, state, batch: data.Batch, split: data.Batch):
    """The task's train step, its metrics given a leading step axis of length 1."""
    state, metrics = task.train_step(state, prepare(split, batch))
    return state, jax.tree.map(lambda m: m[None], metrics)


def many_steps(task: Task, prepare: Callable, state, batches: data.Batch, split: data.Batch):
    """The task's train step over batches stacked on a leading axis, in one `lax.scan`."""
    return jax.lax.scan(lambda s, batch: task.train_step(s, prepare(split, batch)), state, batches)


def in_background(function: Callable, *args, **kwargs) -> concurrent.futures.Future:
    """`function(*args, **kwargs)` in a thread of its own. For compiling (and running) jitted
    functions: XLA releases the GIL meanwhile, so the caller goes on with its own work."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args, **kwargs)
    pool.shutdown(wait=False)  # the thread ends when the function does
    return future


class TrainCalls:
    """The task's train step, jitted for one batch and for `train.steps_per_call` stacked
    batches (a `lax.scan`), batches sharded on `data`, state replicated and donated.

    `compile_ahead` compiles one variant in a background thread: XLA releases the GIL while it
    compiles, so that runs beside whatever the caller does meanwhile (decoding the data,
    initialising or restoring the state) instead of delaying the first step.
    """

    def __init__(self, task: Task, config: ml_collections.ConfigDict, mesh: Mesh, on_device: bool):
        replicated = parallel.replicated(mesh)
        prepare = _as_given
        if on_device:  # batches carry indices into the split, in device memory
            prepare = functools.partial(data.lookup, data_config=config.data, seed=config.seed)
        self.jitted = {  # by whether a call takes stacked batches; compiled when first used
            stacked: jax.jit(
                functools.partial(many_steps if stacked else one_step, task, prepare),
                in_shardings=(replicated, parallel.data_sharded(mesh, int(stacked)), replicated),
                out_shardings=(replicated, replicated),
                donate_argnums=0,
            )
            for stacked in (False, True)
        }
        self.compiled: dict[bool, concurrent.futures.Future] = {}

    def compile_ahead(self, stacked: bool, state, batches: dict, split: dict) -> None:
        """Start compiling a variant for these abstract arguments (`jax.ShapeDtypeStruct`s)."""
        lower = self.jitted[stacked].lower
        self.compiled[stacked] = in_background(lambda: lower(state, batches, split).compile())

    def __call__(self, stacked: bool, state, batches: dict, split: dict):
        """(state, metrics) after the steps; waits for a variant compiled ahead, and raises the
        error that compiling it raised."""
        if stacked in self.compiled:
            return self.compiled[stacked].result()(state, batches, split)
        return self.jitted[stacked](state, batches, split)


def _as_given(split: data.Batch, batch: data.Batch) -> data.Batch:
    """The batch as the iterator made it (no split held in device memory)."""
    return batch


def compile_first_call(
    task: Task,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    source: data.Split,
    batch: dict,
    local: data.Batch,
    on_device: bool,
    start: int,
) -> TrainCalls:
    """The run's train calls, the variant of its first call (from step `start`) compiling in
    the background, for the state `task.init` makes from `batch`, training batches shaped like
    this process's `local` one and, `on_device`, the whole `source` split in device memory; all
    abstract, so the compile needs neither the decoded split nor the state."""
    calls = TrainCalls(task, config, mesh, on_device)
    if start >= config.train.num_steps:  # nothing left to train
        return calls
    count = _call_size(start, config.train)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(config.seed), batch)
    state = parallel.replicate(abstract, mesh)
    stack = (count,) if count > 1 else ()  # a call of several steps stacks their batches
    sharding = parallel.data_sharded(mesh, len(stack))
    batches = {  # the global batch: every process's rows
        k: jax.ShapeDtypeStruct(
            (*stack, len(v) * jax.process_count(), *v.shape[1:]), v.dtype, sharding=sharding
        )
        for k, v in local.items()
    }
    split = {}
    if on_device:  # the arrays `data.get_split` decodes, shaped from one example's
        replicated = parallel.replicated(mesh)
        split = {
            k: jax.ShapeDtypeStruct((len(source), *v.shape[1:]), v.dtype, sharding=replicated)
            for k, v in source.read(np.arange(1)).items()
        }
    calls.compile_ahead(count > 1, state, batches, split)
    return calls


def compile_steps(
    task: Task,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    eval_split: data.Split,
    device_split: data.Batch | None = None,
    train_calls: TrainCalls | None = None,
) -> Steps:
    """Jit the task's steps: batch sharded on `data`, state replicated (and donated to training).

    With a `device_split` (the training split in device memory), train batches carry only
    example indices, looked up and preprocessed inside the compiled step (`data.on_device`).
    `train_calls` are the train steps made (and maybe compiled) beforehand.
    """
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
    train_calls = train_calls or TrainCalls(task, config, mesh, device_split is not None)
    device_split = {} if device_split is None else device_split
    eval_steps = {  # jit compiles lazily: the final variant only when first used
        final: jax.jit(
            functools.partial(task.eval_step, final=final),
            in_shardings=(replicated, sharded),
            out_shardings=replicated,
        )
        for final in (False, True)
    }

    def train(state, local_batches: list[data.Batch]):
        stacked = len(local_batches) > 1
        if stacked:
            local = {k: np.stack([b[k] for b in local_batches]) for k in local_batches[0]}
        else:
            local = local_batches[0]
        batches = parallel.global_batch(local, mesh, int(stacked))
        return train_calls(stacked, state, batches, device_split)

    def evaluate(state, final: bool = False) -> dict[str, float]:
        """The task's numbers over the whole eval split (every example counted exactly once)."""
        outputs = []
        for local in data.eval_batches(
            eval_split,
            config.data,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            outputs.append(eval_steps[final](state, parallel.global_batch(local, mesh)))
        return task.summarize(jax.device_get(outputs))

    first = eval_split.read(np.arange(min(PICTURE_INPUTS, len(eval_split))))
    picture_inputs = data.preprocessor(config.data)(first)["image"]
    picture_inputs = jax.device_put(picture_inputs, replicated)
    pictures_step = jax.jit(task.pictures, in_shardings=replicated, out_shardings=replicated)

    def pictures(state) -> dict[str, np.ndarray]:
        return jax.device_get(pictures_step(state, picture_inputs))

    return Steps(train, evaluate, pictures)


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
    if device_batch % train.batch_splits:
        raise GenJaxError(
            f"train.batch_splits={train.batch_splits} does not divide the {device_batch} examples "
            "each device gets per step (data.batch_size / devices); choose a divisor of it"
        )


# ----------------------------------------------------------------------------- state
def example_batch(
    split: data.Split, config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, jax.Array]:
    """One global training-shaped batch that builds the state: its shapes, and, for a layer
    initialised from data (`models.airbench`'s whitening), its images, spread over the split."""
    local = data.spread_batch(
        split,
        config.data,
        batch_size=config.data.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return parallel.global_batch(local, mesh)


def fresh_state(
    task: Task, config: ml_collections.ConfigDict, mesh: Mesh, batch: dict
) -> concurrent.futures.Future:
    """The state initialised from the seed (`init_state`, replicated), made in the background."""
    rng = jax.random.PRNGKey(config.seed)
    return in_background(init_state, task, rng, batch, out_shardings=parallel.replicated(mesh))


def initial_state(
    task: Task,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    batch: dict,
    checkpointer: Checkpointer,
    iterator=None,
    step: int | None = None,
    require: bool = False,
    fresh: concurrent.futures.Future | None = None,
):
    """Restore the latest (or given) checkpoint if there is one, else initialise from the seed
    (or take the `fresh` state being initialised in the background: `fresh_state`).

    With `require`, a workdir without checkpoints is an error instead of a fresh start.
    """
    rng = jax.random.PRNGKey(config.seed)
    if checkpointer.latest_step() is None and not require:
        fresh = fresh or fresh_state(task, config, mesh, batch)
        return fresh.result(), iterator
    abstract = jax.eval_shape(task.init, rng, batch)
    return checkpointer.restore(parallel.replicate(abstract, mesh), iterator, step)


def resume(
    task: Task,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    batch: dict,
    checkpointer: Checkpointer,
    iterator,
    workdir: Path,
    fresh: concurrent.futures.Future | None = None,
):
    """The training run's `initial_state`: from the newest checkpoint that restores completely,
    else the `fresh` state if one is being made.

    Newer ones whose files are damaged are moved to `damaged_checkpoints/` (never deleted), which
    stderr and `damaged_checkpoints.jsonl` (step, where it went, the step resumed at, the error)
    record, so the run continues as if they had never been saved. When no checkpoint restores,
    nothing is moved and the error lists them.
    """
    damaged: list[DamagedCheckpointError] = []
    for step in sorted(checkpointer.all_steps(), reverse=True) or [None]:  # None: a fresh start
        try:
            state, iterator = initial_state(
                task, config, mesh, batch, checkpointer, iterator, step, fresh=fresh
            )
            break
        except DamagedCheckpointError as error:
            damaged.append(error)
    else:
        directory = checkpointer.manager.directory
        raise GenJaxError(
            f"no checkpoint in {directory} can be read, their files are damaged "
            f"({'; '.join(error.reason for error in damaged)}). Nothing was moved or deleted: "
            f"restore them from a backup, or move {directory} elsewhere to train again from "
            "step 0, or use a new --workdir."
        ) from damaged[0]
    for error in damaged:
        moved = checkpointer.move_aside(error.step, workdir / "damaged_checkpoints")
        if moved is None:  # another process moved it and reports it
            continue
        print(
            f"gen-jax: the checkpoint at step {error.step} in {workdir} is damaged "
            f"({error.reason}); moved it to {moved} and resumes at step {int(state.step)}",
            file=sys.stderr,
        )
        record = {
            "step": error.step,
            "moved_to": str(moved.relative_to(workdir)),
            "resumes_at": int(state.step),
            "error": error.reason,
        }
        with open(workdir / "damaged_checkpoints.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
    return state, iterator


def check_from_step(checkpointer: Checkpointer, step: int) -> None:
    """`gen-jax train --from_step STEP` names a finished checkpoint, or it is an error."""
    saved = checkpointer.all_steps()
    if step not in saved:
        raise GenJaxError(
            f"--from_step {step}: there is no checkpoint at step {step} in "
            f"{checkpointer.manager.directory}; it holds steps {saved}"
        )


def set_aside_after(checkpointer: Checkpointer, step: int, workdir: Path) -> None:
    """Move the checkpoints newer than `step` to `set_aside_checkpoints/` (never deleted), so
    training resumes from `step`: `gen-jax train --from_step STEP`."""
    saved = checkpointer.all_steps()
    for newer in [s for s in saved if s > step]:
        moved = checkpointer.move_aside(newer, workdir / "set_aside_checkpoints")
        if moved is not None:  # process 0 moved it
            print(
                f"gen-jax: --from_step {step}: moved the checkpoint at step {newer} to {moved}",
                file=sys.stderr,
            )


def resume_changes(
    config: ml_collections.ConfigDict,
    workdir: Path,
    step: int,
    identity: str,
    allow_change: bool = False,
) -> dict[str, list]:
    """The changes to record when the run in `workdir` resumes at `step` with `config`
    (`resume_policy`): refused ones raise, unless `allow_change`; free ones are left out.
    `identity`: the training split's, now."""
    saved = config_lib.load(workdir / "config.json", absolute=True)
    before = dataset_record(workdir).get("identity", {}).get(config.data.train_split)
    refused, recorded = resume_policy.sorted_changes(saved, config, before == identity)
    if config.data.folder and before not in (None, identity) and "data.folder" not in refused:
        # the same settings, other images: files changed in the folder, another subset
        refused["the training split's images (data.folder's files)"] = [before, identity]
    if refused and not allow_change:
        raise resume_policy.refusal(workdir, step, refused)
    return {**refused, **recorded}


def dataset_record(workdir: Path) -> dict:
    """The run's `dataset.json` as `record_dataset` wrote it ({} before the first start)."""
    path = workdir / "dataset.json"
    return config_lib.read_json(path) if path.is_file() else {}


def saved_iterator_kind(workdir: Path) -> str | None:
    """The kind of data iterator whose positions the run's checkpoints hold (None: unrecorded)."""
    return dataset_record(workdir).get("iterator")


def note_unapplied(config: ml_collections.ConfigDict, workdir: Path, step: int) -> None:
    """Say which settings differ from those of a finished run, which keeps its config.json."""
    saved = config_lib.load(workdir / "config.json", absolute=True)
    changed = config_lib.changes(saved, config)
    if changed:
        listed = resume_policy.listed(changed)
        print(
            f"gen-jax: {workdir} is trained to step {step}, so its config.json stays as it was; "
            f"not applied: {listed}",
            file=sys.stderr,
        )


def record_config(
    config: ml_collections.ConfigDict, workdir: Path, step: int, changed: dict[str, list]
) -> None:
    """Write `config.json`. A run resumed at `step` with `changed` settings (`resume_changes`)
    says so on stderr and appends them to `config_changes.jsonl` (step, old and new value of
    each), so the workdir still tells how every step was trained."""
    if changed:
        listed = resume_policy.listed(changed)
        print(f"gen-jax: {workdir} resumes at step {step} with {listed}", file=sys.stderr)
        with open(workdir / resume_policy.CHANGES_RECORD, "a") as log:
            log.write(json.dumps({"step": step, "changes": changed}) + "\n")
    config_lib.save(config, workdir / "config.json")


def record_dataset(
    workdir: Path, data_config: ml_collections.ConfigDict, splits: dict, iterator_kind: str
) -> None:
    """Write `dataset.json`: what the run trained on (source, image shape, class names, examples
    per split, images skipped as unreadable, in memory or streamed, the kind of iterator whose
    positions its checkpoints hold), so a loaded run can name its classes even where the data
    are gone."""
    train_split = splits["train"]
    record = {
        "source": data_config.folder or f"tfds:{data_config.name}",
        "image_shape": list(train_split.spec.image_shape),
        "class_names": list(train_split.spec.class_names),
        "examples": {data_config[f"{k}_split"]: len(v) for k, v in splits.items()},
        "skipped_unreadable": {
            data_config[f"{k}_split"]: v.spec.skipped for k, v in splits.items()
        },
        "streamed": not isinstance(train_split, data.InMemory),
        "iterator": iterator_kind,
        # which examples, e.g. folder/SHA256/500-of-50000-stratified-0 (data.max_examples)
        "identity": {data_config[f"{k}_split"]: v.identity for k, v in splits.items()},
    }
    write_text_atomically(workdir / "dataset.json", json.dumps(record, indent=2) + "\n")


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
    mesh = parallel.make_mesh()
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
    batch = example_batch(source, config, mesh)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    if from_step is not None:
        check_from_step(checkpointer, from_step)
    start = checkpointer.latest_step() if from_step is None else from_step
    recorded = bool(start) and (workdir / "config.json").is_file()
    changed = {}
    if recorded and start < config.train.num_steps:  # before anything is decoded or compiled
        changed = resume_changes(config, workdir, start, source.identity, allow_change)
    if from_step is not None:  # only now: a refused resume moves nothing
        set_aside_after(checkpointer, from_step, workdir)
    pipeline = {  # this process's share of the training batches
        "seed": config.seed,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "indices_only": on_device,
    }
    local = data.train_batch_like(source, config.data, **pipeline)
    # compiled (and the state initialised) in the background while the data are decoded
    train_calls = compile_first_call(
        task, config, mesh, source, batch, local, on_device, start or 0
    )
    fresh = fresh_state(task, config, mesh, batch) if start is None else None
    train_split = data.get_split(config.data, config.data.train_split)
    eval_split = data.get_split(config.data, config.data.eval_split)
    kind = data.iterator_kind(train_split, config.data, on_device)
    iterator = None  # a saved position restores only into an iterator of its own kind
    if start is None or saved_iterator_kind(workdir) in (kind, None):
        iterator = data.train_iterator(train_split, config.data, **pipeline)
    state, iterator = resume(task, config, mesh, batch, checkpointer, iterator, workdir, fresh)
    step = int(state.step)
    if iterator is None:  # batch n is step n's: the same batches from the step
        iterator = data.train_iterator(train_split, config.data, **pipeline, start=step)
        if is_main and step:
            print(
                f"gen-jax: the data position saved at step {step} does not fit this pipeline "
                f"({kind}; saved by {saved_iterator_kind(workdir) or 'an unrecorded kind'}); "
                "resumed at the same batch from the step",
                file=sys.stderr,
            )
    if recorded and start >= config.train.num_steps > step:  # its last checkpoint was damaged
        changed = resume_changes(config, workdir, step, source.identity, allow_change)
    finished = recorded and step >= config.train.num_steps
    if is_main and finished:  # nothing to train: config.json stays as it was trained
        note_unapplied(config, workdir, step)
    if is_main and not finished:  # only now: a workdir refused above keeps its config
        record_config(config, workdir, step, changed)
        provenance.record_training(workdir, step)
        splits = {"train": train_split, "eval": eval_split}
        record_dataset(workdir, config.data, splits, kind)
    device_split = None
    if on_device:
        device_split = jax.device_put(train_split.arrays, parallel.replicated(mesh))
    steps = compile_steps(task, config, mesh, eval_split, device_split, train_calls)
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
    config, state, iterator, steps: Steps, checkpointer, writer, invocation: Invocation
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
        count = _call_size(step, train)
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
            check_finite_state(state, step, checkpointer)
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


@jax.jit
def _finite_leaves(state) -> Any:
    """Per floating leaf of the state, whether all its values are finite (one reduction each)."""
    finite = lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    return jax.tree.map(finite, state)


def check_finite_state(state, step: int, checkpointer: Checkpointer) -> None:
    """Raise `NonFiniteStateError`, naming the leaves, if the state holds a NaN or an infinity:
    checked before every evaluation and save, so a diverged model is never scored or saved."""
    flags = jax.tree_util.tree_flatten_with_path(jax.device_get(_finite_leaves(state)))[0]
    bad = [jax.tree_util.keystr(path) for path, finite in flags if not finite]
    if bad:
        checkpointer.wait()
        raise NonFiniteStateError(step, bad, checkpointer.latest_step())


def _due(step: int, every: int) -> bool:
    """Whether an event repeated every `every` steps falls on `step` (never for 0: the loop adds
    the last step)."""
    return every > 0 and step % every == 0


def _call_size(step: int, train: ml_collections.ConfigDict) -> int:
    """The steps of the compiled call made at `step`: `train.steps_per_call`, or 1 when fewer
    are left before the next event."""
    room = _next_event(step, train) - step
    return train.steps_per_call if room >= train.steps_per_call else 1


def _next_event(step: int, train: ml_collections.ConfigDict) -> int:
    """The first step after `step` that logs, evaluates, checkpoints or ends the run."""
    periods = [p for p in (train.log_every, train.eval_every, train.checkpoint_every) if p > 0]
    return min([train.num_steps, *(step - step % p + p for p in periods)])


class TrainLog:
    """Per-step train metrics: kept on device until needed, checked for divergence, averaged
    over each logging window, with the time of the first call (`first_step_seconds`: what is
    left of its compile, which starts in the background, and the steps) and of the whole
    start-up up to its end (`startup_seconds`, from `started`), and a progress bar."""

    def __init__(
        self, writer: MetricWriter, batch_size: int, start: int, total: int, started: float
    ):
        self.writer, self.batch_size, self.start, self.started = writer, batch_size, start, started
        self.pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched
        self.window: list[dict] = []  # host metrics since the last write
        self.window_start = time.perf_counter()
        self.bar = progress_bar(total, start, enabled=writer.enabled)

    def record(self, step: int, metrics: dict) -> None:
        """Keep the metrics of the steps up to `step` (a leading axis, one row per step)."""
        if step - len(metrics["loss"]) == self.start:  # the first call
            jax.block_until_ready(metrics)
            now = time.perf_counter()
            seconds = {"first_step_seconds": now - self.window_start}
            self.writer.write(step, "train", {**seconds, "startup_seconds": now - self.started})
        self.pending.append((step, metrics))
        self.bar.update(len(metrics["loss"]))

    def check_finite(self) -> None:
        """Fetch pending metrics; stop the run at the first step whose loss is not finite."""
        for last, metrics in jax.device_get(self.pending):
            count = len(metrics["loss"])
            for row in range(count):
                values = {k: float(v[row]) for k, v in metrics.items()}
                if not math.isfinite(values["loss"]):
                    raise NonFiniteLossError(last - count + 1 + row, values)
                self.window.append(values)
        self.pending = []

    def write(self, step: int) -> None:
        """Write the window's mean metrics and throughput, then start a new window."""
        elapsed = time.perf_counter() - self.window_start
        means = {k: float(np.mean([m[k] for m in self.window])) for k in self.window[0]}
        means["steps_per_second"] = len(self.window) / elapsed
        means["examples_per_second"] = len(self.window) * self.batch_size / elapsed
        self.writer.write(step, "train", means)
        self.bar.set_postfix(loss=f"{means['loss']:.4f}")
        self.window, self.window_start = [], time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside out of the current window's throughput."""
        start = time.perf_counter()
        yield
        self.window_start += time.perf_counter() - start

    def close(self) -> None:
        self.bar.close()


def load_state(workdir: str | Path, step: int | None = None):
    """A run's config, task, mesh and restored state (latest or given step) on these devices."""
    workdir = Path(workdir)
    config = config_lib.load(workdir / "config.json")
    mesh = parallel.make_mesh()
    parallel.check_batch_sizes({"data.eval_batch_size": config.data.eval_batch_size}, mesh)
    task = tasks.build(config)
    split = data.open_split(config.data, config.data.eval_split)  # one batch read, for shapes
    checkpointer = Checkpointer(workdir / "checkpoints")  # reads only: the run may be saving
    try:
        batch = example_batch(split, config, mesh)
        state, _ = initial_state(task, config, mesh, batch, checkpointer, step=step, require=True)
    finally:
        checkpointer.close()
    return config, task, mesh, state
