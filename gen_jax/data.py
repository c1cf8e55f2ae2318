"""Input pipelines: `tfds.data_source` (array_record) decoded once into memory, fed by `grain`.

A training pipeline shuffles example indices with a seed (a new permutation each epoch), batches
them at the *global* batch size and gives each process its own contiguous slice of every global
batch. A run therefore sees the same global batches whatever the number of processes or devices,
and its position is a grain iterator state that checkpoints save and restore.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np

from gen_jax.errors import GenJaxError

Batch = dict[str, np.ndarray]
DECODE_CHUNK = 4096


# ----------------------------------------------------------------------------- preprocessing
# Scalings multiply by a float32 reciprocal (XLA compiles a division by a constant into that
# multiplication) and never leave a multiply-add to fuse: numpy on the host and a compiled step
# (data.on_device) give the same bits.
def scale_to_unit(batch: Batch) -> Batch:
    """uint8 pixels to float32 in [0, 1]."""
    return {**batch, "image": batch["image"].astype(np.float32) * np.float32(1 / 255)}


def scale_to_symmetric(batch: Batch) -> Batch:
    """uint8 pixels to float32 in [-1, 1] (a tanh generator's range)."""
    centred = batch["image"].astype(np.float32) - np.float32(127.5)  # exact: no fused multiply-add
    return {**batch, "image": centred * np.float32(1 / 127.5)}


PREPROCESSORS: dict[str, Callable[[Batch], Batch]] = {
    "scale_to_unit": scale_to_unit,
    "scale_to_symmetric": scale_to_symmetric,
}


PIXEL_RANGES = {"scale_to_unit": (0.0, 1.0), "scale_to_symmetric": (-1.0, 1.0)}


def pixel_range(names: tuple[str, ...]) -> tuple[float, float]:
    """The (low, high) pixel values after the named preprocessing (set by its last scaling)."""
    scalings = [n for n in names if n in PIXEL_RANGES]
    if not scalings:
        raise GenJaxError(
            f"data.preprocess {tuple(names)} sets no pixel range; end with one of "
            f"{sorted(PIXEL_RANGES)}"
        )
    return PIXEL_RANGES[scalings[-1]]


def preprocessor(names: tuple[str, ...]) -> Callable[[Batch], Batch]:
    """Compose the named preprocessing functions, in order."""
    unknown = [n for n in names if n not in PREPROCESSORS]
    if unknown:
        raise GenJaxError(
            f"unknown data.preprocess step(s) {unknown}; available: {sorted(PREPROCESSORS)}"
        )
    return lambda batch: functools.reduce(lambda b, name: PREPROCESSORS[name](b), names, batch)


# ----------------------------------------------------------------------------- loading
def data_dir(config: ml_collections.ConfigDict) -> str | None:
    """The TFDS directory: `config.data_dir` if set, else $TFDS_DATA_DIR, else tfds' default."""
    return config.data_dir or os.environ.get("TFDS_DATA_DIR") or None


def load_split(config: ml_collections.ConfigDict, split: str) -> Batch:
    """All examples of `split` as in-memory arrays (decoded once per process, then cached)."""
    return _decode_split(config.name, split, data_dir(config), config.max_examples)


def clear_cache() -> None:
    """Forget the decoded splits kept in memory (they are reread on next use)."""
    _decode_split.cache_clear()


@functools.lru_cache(maxsize=4)
def _decode_split(name: str, split: str, directory: str | None, max_examples: int) -> Batch:
    import tensorflow_datasets as tfds  # heavy import, only when data is needed

    searched = directory or "tfds' default directory (~/tensorflow_datasets)"
    remedy = (
        f"Point config.data.data_dir or $TFDS_DATA_DIR at a directory holding {name}/ in "
        "array_record format (MNIST: ../shared/data/tensorflow_datasets), or build it with "
        f"`pip install -e .[prepare]` and `tfds build {name} --file_format=array_record`."
    )
    if directory and not (Path(directory) / name).is_dir():
        raise GenJaxError(
            f"dataset '{name}' not found: {searched} has no {name}/ folder.\n{remedy}"
        )
    try:
        source = tfds.data_source(name, split=split, data_dir=directory, download=False)
    except Exception as error:  # tfds raises several types for "not prepared here"
        reason = str(error).splitlines()[0] if str(error) else ""
        raise GenJaxError(
            f"dataset '{name}' (split '{split}') cannot be read from {searched}: "
            f"{type(error).__name__}: {reason}\n{remedy}"
        ) from None
    count = len(source) if not max_examples else min(max_examples, len(source))
    examples = []
    for start in range(0, count, DECODE_CHUNK):
        examples += source.__getitems__(list(range(start, min(start + DECODE_CHUNK, count))))
    return {
        "image": np.stack([e["image"] for e in examples]),
        "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
    }


# ----------------------------------------------------------------------------- pipelines
def _process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    local = batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def train_iterator(
    arrays: Batch,
    *,
    batch_size: int,
    seed: int,
    preprocess: tuple[str, ...],
    process_index: int = 0,
    process_count: int = 1,
    indices_only: bool = False,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator over this process's share of shuffled global batches.

    With `indices_only`, batches hold only each row's example `index`, for a split kept in device
    memory (`lookup` fetches and preprocesses the rows inside the compiled step).
    """
    transform = preprocessor(preprocess)
    rows = _process_slice(batch_size, process_index, process_count)
    num_examples = len(arrays["label"])
    if batch_size > num_examples:
        raise GenJaxError(
            f"data.batch_size {batch_size} exceeds the {num_examples} training examples"
        )
    dataset = (
        grain.MapDataset.range(num_examples)
        .shuffle(seed=seed)
        .repeat(None)
        .batch(batch_size, drop_remainder=True)
        .map(
            (lambda indices: {"index": indices[rows].astype(np.int32)})
            if indices_only
            else (lambda indices: transform({k: v[indices[rows]] for k, v in arrays.items()}))
        )
    )
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    return iter(dataset.to_iter_dataset(read_options=options))


def lookup(split: Batch, batch: Batch, preprocess: tuple[str, ...]) -> Batch:
    """The examples `batch["index"]` of a split held in device memory, preprocessed (in jit).

    Gathered and scaled as (examples, values) rows: XLA's CPU backend does not vectorise
    elementwise ops over an image's trailing axis of size 1 (7x slower; benchmarks/README.md).
    """
    rows = {k: v.reshape(len(v), -1)[batch["index"]] for k, v in split.items()}
    rows = preprocessor(preprocess)(rows)
    return {k: rows[k].reshape(-1, *v.shape[1:]) for k, v in split.items()}


def eval_batches(
    arrays: Batch,
    *,
    batch_size: int,
    preprocess: tuple[str, ...],
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """This process's share of every global batch of a split, in order, padded to full batches.

    Padded rows repeat example 0 and carry `mask` 0, so sums over `mask` count each example once.
    `index` is each row's position in the split: a per-example key for evaluations that sample
    (e.g. a fixed binarisation), independent of batch size and device count.
    """
    transform = preprocessor(preprocess)
    rows = _process_slice(batch_size, process_index, process_count)
    num_examples = len(arrays["label"])
    for start in range(0, num_examples, batch_size):
        indices = np.arange(start, start + batch_size)[rows]
        mask = indices < num_examples
        indices = np.where(mask, indices, 0)
        batch = transform({k: v[indices] for k, v in arrays.items()})
        yield {**batch, "mask": mask.astype(np.float32), "index": indices.astype(np.int32)}


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
