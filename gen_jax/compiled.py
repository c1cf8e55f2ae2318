"""The compiled calls a run makes: its train steps (one or `train.steps_per_call` per call, the
first call compiled in the background), the whole-split evaluation and the pictures."""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gen_jax import data, parallel
from gen_jax.tasks.base import Task


class RunParts(NamedTuple):
    """What a run's compiled calls and state are made for: its task, config, mesh, one global
    training-shaped batch (shapes; the images of a layer initialised from data), and the state
    `task.init` makes from it, abstract (shapes) and laid out over the mesh (`run_parts`)."""

    task: Task
    config: ml_collections.ConfigDict
    mesh: Mesh
    batch: dict[str, jax.Array]
    state: Any


def run_parts(
    task: Task, config: ml_collections.ConfigDict, mesh: Mesh, batch: dict[str, jax.Array]
) -> RunParts:
    """The parts, with the abstract state sharded by the rules of `config.mesh`."""
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(config.seed), batch)
    sharding = parallel.state_sharding(abstract, mesh, config.mesh)
    return RunParts(task, config, mesh, batch, parallel.placed(abstract, sharding))


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
    batches (a `lax.scan`), batches sharded over the devices, state laid out as
    `state_sharding` (replicated, or split by the FSDP rules) and donated.

    `compile_ahead` compiles one variant in a background thread: XLA releases the GIL while it
    compiles, so that runs beside whatever the caller does meanwhile (decoding the data,
    initialising or restoring the state) instead of delaying the first step.
    """

    def __init__(
        self,
        task: Task,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        state_sharding: Any,
        on_device: bool,
    ):
        replicated = parallel.replicated(mesh)
        prepare = _as_given
        if on_device:  # batches carry indices into the split, in device memory
            prepare = functools.partial(data.lookup, data_config=config.data, seed=config.seed)
        self.jitted = {  # by whether a call takes stacked batches; compiled when first used
            stacked: jax.jit(
                functools.partial(many_steps if stacked else one_step, task, prepare),
                in_shardings=(
                    state_sharding,
                    parallel.data_sharded(mesh, int(stacked)),
                    replicated,
                ),
                out_shardings=(state_sharding, replicated),
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
    parts: RunParts, source: data.Split, local: data.Batch, on_device: bool, start: int
) -> TrainCalls:
    """The run's train calls, the variant of its first call (from step `start`) compiling in
    the background, for the state `task.init` makes from the parts' batch, training batches
    shaped like this process's `local` one and, `on_device`, the whole `source` split in device
    memory; all abstract, so the compile needs neither the decoded split nor the state."""
    task, config, mesh, _, state = parts
    calls = TrainCalls(task, config, mesh, parallel.shardings_of(state), on_device)
    if start >= config.train.num_steps:  # nothing left to train
        return calls
    count = call_size(start, config.train)
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
    state_sharding: Any,
    eval_split: data.Split,
    device_split: data.Batch | None = None,
    train_calls: TrainCalls | None = None,
) -> Steps:
    """Jit the task's steps: batch sharded over the devices, state laid out as `state_sharding`
    (`parallel.shardings_of(state)`; donated to training).

    With a `device_split` (the training split in device memory), train batches carry only
    example indices, looked up and preprocessed inside the compiled step (`data.on_device`).
    `train_calls` are the train steps made (and maybe compiled) beforehand.
    """
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
    on_device = device_split is not None
    train_calls = train_calls or TrainCalls(task, config, mesh, state_sharding, on_device)
    device_split = {} if device_split is None else device_split
    eval_steps = {  # jit compiles lazily: the final variant only when first used
        final: jax.jit(
            functools.partial(task.eval_step, final=final),
            in_shardings=(state_sharding, sharded),
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
    pictures_step = jax.jit(
        task.pictures, in_shardings=(state_sharding, replicated), out_shardings=replicated
    )

    def pictures(state) -> dict[str, np.ndarray]:
        return jax.device_get(pictures_step(state, picture_inputs))

    return Steps(train, evaluate, pictures)


def call_size(step: int, train: ml_collections.ConfigDict) -> int:
    """The steps of the compiled call made at `step`: `train.steps_per_call`, or 1 when fewer
    are left before the next event."""
    room = next_event(step, train) - step
    return train.steps_per_call if room >= train.steps_per_call else 1


def next_event(step: int, train: ml_collections.ConfigDict) -> int:
    """The first step after `step` that logs, evaluates, checkpoints or ends the run."""
    periods = [p for p in (train.log_every, train.eval_every, train.checkpoint_every) if p > 0]
    return min([train.num_steps, *(step - step % p + p for p in periods)])
