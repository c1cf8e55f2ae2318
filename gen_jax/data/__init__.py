"""Data: sources (TFDS by name, image folders), named preprocessing, and the pipelines that turn
a split into this process's share of each global batch. See `sources`, `preprocess`, `pipeline`.
"""

from gen_jax.data.pipeline import (
    eval_batches,
    iterator_kind,
    lookup,
    map_batches,
    spread_batch,
    train_batch_like,
    train_iterator,
)
from gen_jax.data.preprocess import pixel_range, preprocessor
from gen_jax.data.sources import (
    Batch,
    DataSpec,
    InMemory,
    Split,
    channel_stats,
    clear_cache,
    data_dir,
    describe,
    fits_in_memory,
    get_split,
    load_split,
    open_split,
)

__all__ = [
    "Batch",
    "DataSpec",
    "InMemory",
    "Split",
    "channel_stats",
    "clear_cache",
    "data_dir",
    "describe",
    "eval_batches",
    "fits_in_memory",
    "get_split",
    "iterator_kind",
    "load_split",
    "lookup",
    "map_batches",
    "open_split",
    "pixel_range",
    "preprocessor",
    "spread_batch",
    "train_batch_like",
    "train_iterator",
]
