"""Pipelines: a split's examples to this process's share of shuffled global batches.

A training pipeline shuffles example indices with a seed (a new permutation each epoch), batches
them at the *global* batch size and gives each process its own contiguous slice of every global
batch. A run therefore sees the same global batches whatever the number of processes or devices,
and its position is a grain iterator state that checkpoints save and restore. A split in memory
is indexed in this process; a split read from disk (`sources.get_split`) is read, decoded and
preprocessed by grain worker processes, ahead of the step: the same batches either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from gen_jax.data.preprocess import preprocessor
from gen_jax.data.sources import InMemory, Split
from gen_jax.errors import GenJaxError

Batch = dict[str, np.ndarray]
PREFETCH = 4  # batches read ahead (per worker process when streaming)


def _process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    local = batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


class _ReadBatch:
    """A global batch's example indices to this process's rows: their indices, step and epoch
    only (`indices_only`), or the examples read and preprocessed. A class, so worker processes
    can unpickle it."""

    def __init__(self, split: Split, rows: slice, transform: Callable, indices_only: bool):
        self.split, self.rows, self.transform = split, rows, transform
        self.indices_only = indices_only

    def __call__(self, step: int, indices: np.ndarray) -> Batch:
        # the shuffled epochs follow each other in one stream: a batch may straddle two
        positions = step * len(indices) + np.arange(len(indices))[self.rows]
        indices = indices[self.rows]
        keys = {
            "index": indices.astype(np.int32),
            "step": np.full(len(indices), step, np.int32),
            "epoch": (positions // len(self.split)).astype(np.int32),
        }
        if self.indices_only:
            return keys
        batch = self.transform({**self.split.read(indices), **keys})
        return {k: v for k, v in batch.items() if k not in keys}


def train_iterator(
    split: Split,
    data_config: ml_collections.ConfigDict,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    indices_only: bool = False,
    start: int = 0,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator over this process's share of shuffled global batches
    of `data_config.batch_size` examples, preprocessed with the random steps keyed by `seed`,
    from batch `start` on (batch n is step n's: a position to resume at without a saved state).

    With `indices_only`, batches hold only each row's example `index` and `step`, for a split kept
    in device memory (`lookup` fetches and preprocesses the rows inside the compiled step).
    """
    read = _train_reader(split, data_config, seed, process_index, process_count, indices_only)
    dataset = (
        grain.MapDataset.range(len(split))
        .shuffle(seed=seed)
        .repeat(None)
        .batch(data_config.batch_size, drop_remainder=True)
        .map_with_index(read)
    )
    if start:
        dataset = dataset[start:]  # the same batches, numbered as before
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=PREFETCH)
    dataset = dataset.to_iter_dataset(read_options=options)
    if iterator_kind(split, data_config, indices_only) != IN_PROCESS:
        _allow_unparsed_flags()
        workers = grain.MultiprocessingOptions(
            num_workers=data_config.workers, per_worker_buffer_size=PREFETCH
        )
        dataset = dataset.mp_prefetch(workers)
    return iter(dataset)


IN_PROCESS = "in process"


def iterator_kind(split: Split, data_config: ml_collections.ConfigDict, indices_only: bool) -> str:
    """Whether `train_iterator` reads in this process or in worker processes (how many): a saved
    position restores only into an iterator of its own kind."""
    if not isinstance(split, InMemory) and not indices_only and data_config.workers:
        return f"{data_config.workers} worker processes"
    return IN_PROCESS


def train_batch_like(
    split: Split,
    data_config: ml_collections.ConfigDict,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    indices_only: bool = False,
) -> Batch:
    """A batch with the keys, shapes and dtypes of `train_iterator`'s (the split's first
    examples, unshuffled), to compile the train step before the iterator is made."""
    read = _train_reader(split, data_config, seed, process_index, process_count, indices_only)
    return read(0, np.arange(data_config.batch_size))


def _train_reader(
    split: Split,
    data_config: ml_collections.ConfigDict,
    seed: int,
    process_index: int,
    process_count: int,
    indices_only: bool,
) -> _ReadBatch:
    """What turns each global batch's example indices into this process's training rows."""
    batch_size = data_config.batch_size
    if batch_size > len(split):
        raise GenJaxError(
            f"data.batch_size {batch_size} exceeds the {len(split)} training examples"
        )
    rows = _process_slice(batch_size, process_index, process_count)
    transform = preprocessor(data_config, seed=seed, train=True)
    return _ReadBatch(split, rows, transform, indices_only)


def _allow_unparsed_flags() -> None:
    """grain 0.2.18's worker processes read an absl flag, which raises in a program that never
    parsed absl flags (google/grain#1355, fixed after 0.2.18): mark them parsed, at defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def lookup(split: Batch, batch: Batch, data_config: ml_collections.ConfigDict, seed: int) -> Batch:
    """The examples `batch["index"]` of a split held in device memory, preprocessed (in jit),
    with the random steps of training batch `batch["step"]` (in `batch["epoch"]`).

    Gathered and scaled as (examples, values) rows: XLA's CPU backend does not vectorise
    elementwise ops over an image's trailing axis of size 1 (7x slower; benchmarks/README.md).
    """
    rows = {k: v.reshape(len(v), -1)[batch["index"]] for k, v in split.items()}
    image_shape = split["image"].shape[1:]
    transform = preprocessor(data_config, image_shape=image_shape, seed=seed, train=True)
    rows = transform({**rows, **{k: batch[k] for k in ("index", "step", "epoch")}})
    return {k: rows[k].reshape(-1, *v.shape[1:]) for k, v in split.items()}


def eval_batches(
    split: Split,
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """This process's share of every global batch of a split, in order, padded to full batches
    (of `batch_size`, default `data.eval_batch_size`), preprocessed without the random steps.

    Padded rows repeat example 0 and carry `mask` 0, so sums over `mask` count each example once.
    `index` is each row's position in the split: a per-example key for evaluations that sample
    (e.g. a fixed binarisation), independent of batch size and device count.
    """
    batch_size = batch_size or data_config.eval_batch_size
    transform = preprocessor(data_config)
    rows = _process_slice(batch_size, process_index, process_count)
    for start in range(0, len(split), batch_size):
        indices = np.arange(start, start + batch_size)[rows]
        mask = indices < len(split)
        indices = np.where(mask, indices, 0)
        batch = transform(split.read(indices))
        yield {**batch, "mask": mask.astype(np.float32), "index": indices.astype(np.int32)}


def spread_batch(
    split: Split,
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Batch:
    """This process's share of one global batch of examples spread evenly over the split (a
    folder's split is stored class by class), preprocessed without the random steps."""
    spread = np.linspace(0, len(split) - 1, batch_size).round().astype(np.int64)
    rows = spread[_process_slice(batch_size, process_index, process_count)]
    return preprocessor(data_config)(split.read(rows))


def map_batches(function: Callable, *arrays: np.ndarray, batch_size: int = 500):
    """`function` over aligned leading-axis slices of `arrays`, outputs concatenated as numpy
    (a tuple of arrays when `function` returns a tuple)."""
    if not len(arrays[0]) or any(len(a) != len(arrays[0]) for a in arrays):
        shapes = [np.shape(a) for a in arrays]
        raise GenJaxError(f"expected one or more examples, the same number in each input: {shapes}")
    parts = [
        jax.device_get(function(*(a[i : i + batch_size] for a in arrays)))
        for i in range(0, len(arrays[0]), batch_size)
    ]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
    return np.concatenate(parts)
