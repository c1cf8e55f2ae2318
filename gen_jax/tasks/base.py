"""What every task gives the training loop: pure init / train_step / eval_step functions.

The loop never knows which task it runs. A task's state is one pytree with a `step` field;
randomness inside a step comes from `step_key(state)`, i.e. from (seed, step), so a resumed run
draws exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen_jax import data
from gen_jax.errors import GenJaxError

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Task(Protocol):
    """A model family's objective. All methods are pure and jit-able."""

    def init(self, rng: jax.Array, batch: Batch) -> Any:
        """A fresh train state for inputs shaped like `batch`."""

    def train_step(self, state: Any, batch: Batch) -> tuple[Any, Metrics]:
        """One optimisation step: the new state and scalar metrics (with a `loss`)."""

    def eval_step(self, state: Any, batch: Batch, final: bool = False) -> Metrics:
        """Per-batch *sums* over examples whose `mask` is 1, and `count`, how many there are.

        `final` asks for the run's reported numbers (e.g. more importance samples)."""

    def summarize(self, outputs: list[Metrics]) -> dict[str, float]:
        """The evaluation's numbers from every batch's `eval_step` output (host arrays)."""

    def pictures(self, state: Any, images: jax.Array) -> dict[str, jax.Array]:
        """Named image layouts (rows, columns, H, W, C) in [0, 1] to save at each evaluation,
        made from fixed eval `images` and fixed noise so a series over training is comparable.
        May be empty."""


# Initialisers draw a threefry stream per parameter: a long straight-line program that LLVM's
# default -O3 compiles 2-4x slower than -O2. Both gave the same bits for every experiment's init
# on the Intel Xeon VM (AVX-512; benchmarks/init_compile.py), and test_train checks the tiny CNN's
# on whatever CPU runs the tests. Init runs once, so its compile time is all it costs.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def init_state(task: Task, rng: jax.Array, batch: Batch, **jit_options) -> Any:
    """`task.init(rng, batch)`, jitted with `jit_options` (e.g. out_shardings) and compiled at
    -O2 (INIT_COMPILER_OPTIONS)."""
    init = jax.jit(task.init, compiler_options=INIT_COMPILER_OPTIONS, **jit_options)
    return init(rng, batch)


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
    """The key for one step, a pure function of the run's key and the step number."""
    return jax.random.fold_in(rng, step)


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The EMA's decay at `step`: (1 + step) / (10 + step) early on, so the average starts fast."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(average: Any, new: Any, decay: float, step: jax.Array) -> Any:
    """The moving average `average` moved towards `new` by step `step`'s rate (`ema_decay`)."""
    return optax.incremental_update(new, average, 1.0 - ema_decay(decay, step))


def optimizer_step(params: Any, opt_state: Any, grads: Any, optimizer) -> tuple[Any, Any]:
    """`optimizer`'s update of `params` by `grads`: the new parameters and optimizer state."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@flax.struct.dataclass
class TrainState:
    """What a single-network run carries from step to step; families add fields (batch
    statistics, an EMA) by subclassing. Checkpoints store it by field name."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def apply_gradients(self, grads: Any, optimizer, **changes: Any) -> TrainState:
        """The next step's state: the parameters updated by `optimizer` with `grads`, the other
        fields `changes` replaced (e.g. new batch statistics)."""
        params, opt_state = optimizer_step(self.params, self.opt_state, grads, optimizer)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


def picture_latents(num_classes: int) -> tuple[int, int, jax.Array, jax.Array | None]:
    """The rows, columns, eval indices and labels of a sample picture: 8x8, or one row of 10
    per class; the indices lie beyond any eval example's, so pictures never repeat one."""
    rows, columns = (num_classes, 10) if num_classes else (8, 8)
    labels = jnp.repeat(jnp.arange(rows), columns) if num_classes else None
    return rows, columns, jnp.arange(rows * columns) + 10**6, labels


def check_symmetric_range(config: ml_collections.ConfigDict, family: str) -> None:
    """Refuse data outside [-1, 1], the range a generator's tanh output and the noise paths of
    diffusion assume."""
    low, high = data.pixel_range(config.data)
    if np.any(low != -1.0) or np.any(high != 1.0):
        raise GenJaxError(
            f"{family} images must be in [-1, 1]: data.preprocess=('scale_to_symmetric',)"
        )


def example_keys(seed: int, index: jax.Array) -> jax.Array:
    """One key per eval example, fold_in(key(seed), i): the same whatever the batch size or
    device count."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


def check_image_shape(made: tuple[int, ...], images: jax.Array, maker: str, fix: str) -> None:
    """Refuse at init a model whose images (`made`, without the batch axis) are not shaped like
    the data's, before a loss fails on the mismatch deep inside the step."""
    if made != images.shape[1:]:
        raise GenJaxError(f"{maker} {made} images but the data are {images.shape[1:]}; {fix}")


def mean_of_sums(outputs: list[Metrics]) -> dict[str, float]:
    """Add up per-batch sums and divide by the total `count` of examples: per-example means."""
    sums = {k: float(np.sum([o[k] for o in outputs])) for k in outputs[0]}
    count = sums.pop("count")
    return {k: v / count for k, v in sums.items()}


def means_and_scores(
    outputs: list[Metrics], counted: tuple[str, ...], scorer, samples: int, ignored=()
) -> dict[str, float]:
    """Per-example means of the `counted` sums (`mean_of_sums`) and, with a scorer
    (`sample_quality.SampleScorer`), the scores of the other outputs but `ignored`."""
    results = mean_of_sums([{k: o[k] for k in counted} for o in outputs])
    if scorer is None:
        return results
    scored = [{k: v for k, v in o.items() if k not in (*counted, *ignored)} for o in outputs]
    return {**results, **scorer.summarize(scored, samples)}


class BatchSplits(NamedTuple):
    """How a train step takes its gradients: of `count` equal slices of the batch, averaged,
    either concurrently (for speed on a CPU) or one after another (`accumulate`: gradient
    accumulation over micro-batches, for memory). From `train.batch_splits` and
    `train.accumulate_gradients`."""

    count: int = 1
    accumulate: bool = False

    @classmethod
    def of(cls, train: ml_collections.ConfigDict) -> BatchSplits:
        return cls(train.batch_splits, train.accumulate_gradients)


def split_value_and_grad(loss_fn: Callable, splits: BatchSplits) -> Callable:
    """`jax.value_and_grad(loss_fn, has_aux=True)`, computed as `splits.count` gradients of
    equal slices of the batch and averaged: the same numbers up to float rounding.

    Concurrently, the slices are separate branches of the compiled step, and XLA's CPU runtime
    runs independent branches concurrently, so one CPU device uses several cores (the CNN trains
    1.3x faster on 2 cores with 4 slices: benchmarks/README.md). Accumulated, they are the steps
    of a `lax.scan`, so only one slice's activations are in memory at a time.
    `loss_fn(params, *batch[, rng=key])` must return (loss, aux), both means over the examples;
    every array of `batch` has examples on axis 0. Slice i takes rows i, i + count, ..., so each
    device's rows spread evenly over the slices. A key given as `rng=` (dropout's) reaches the
    whole batch as it is and slice i folded with i, so that slices draw different masks (of the
    same distribution, not those of the whole batch).
    """
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    count = splits.count
    if count == 1:
        return value_and_grad

    def sliced(array: jax.Array) -> jax.Array:  # (count, rows, ...): slice i is [i]
        return array.reshape(array.shape[0] // count, count, *array.shape[1:]).swapaxes(0, 1)

    def of_slice(params, rows, index, rng):
        keyed = {} if rng is None else {"rng": jax.random.fold_in(rng, index)}
        return value_and_grad(params, *rows, **keyed)

    def averaged(params, *batch, rng=None):
        slices = jax.tree.map(sliced, batch)
        if splits.accumulate:
            first = jax.tree.map(lambda a: a[0], slices)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(of_slice, params, first, 0, rng))
            add = lambda total, part: (jax.tree.map(jnp.add, total, part), None)
            total, _ = jax.lax.scan(
                lambda total, xs: add(total, of_slice(params, *xs, rng)),
                zeros,
                (slices, jnp.arange(count)),
            )
            return jax.tree.map(lambda value: value / count, total)
        parts = [
            of_slice(params, jax.tree.map(lambda a, i=i: a[i], slices), i, rng)
            for i in range(count)
        ]
        return jax.tree.map(lambda *values: sum(values) / count, *parts)

    return averaged
