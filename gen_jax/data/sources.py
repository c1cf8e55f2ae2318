"""Sources: a dataset split as random-access uint8 images and labels, whatever it is stored as.

`data.folder` set: an image folder, through its array_record cache (`folder.py`). Otherwise
`data.name`: a TFDS dataset prepared as array_record, read with `tfds.data_source`, or, where no
prepared copy is found (or `data.source="download"`), MNIST, Fashion-MNIST or CIFAR-10 from their
canonical files, downloaded on first use (`canonical.py`). Each gives a `Split`: its examples by
index, and a `DataSpec` (image shape, class names) that every model takes its shape from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import ml_collections
import numpy as np

from gen_jax.data import canonical
from gen_jax.data import folder as folder_lib
from gen_jax.errors import GenJaxError

Batch = dict[str, np.ndarray]
DECODE_CHUNK = 4096  # examples read per call while decoding a split into memory


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data: the image shape and the class names (none for
    unlabelled data)."""

    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    labelled: bool
    skipped: int = 0  # unreadable images left out (data.skip_unreadable)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Split:
    """A split's examples by index: `read(indices)` gives uint8 `image` (N, H, W, C) and, for
    labelled data, int32 `label`. Picklable, so grain's worker processes can read it.
    `identity` names its examples (a cache key for features of them); `source` says where they
    come from, for a run's records."""

    def __init__(
        self, records, decode, size: int, spec: DataSpec, identity: str = "", source: str = ""
    ):
        self.records, self.decode, self.size, self.spec = records, decode, size, spec
        self.identity, self.source = identity, source

    def __len__(self) -> int:
        return self.size

    def read(self, indices: np.ndarray) -> Batch:
        examples = [self.decode(r) for r in self.records.__getitems__([int(i) for i in indices])]
        batch = {"image": np.stack([image for image, _ in examples])}
        if self.spec.labelled:
            batch["label"] = np.asarray([label for _, label in examples], np.int32)
        return batch

    def nbytes(self) -> int:
        """Bytes of all its decoded images."""
        return self.size * int(np.prod(self.spec.image_shape))


class InMemory(Split):
    """A split decoded into host arrays: `read` is indexing."""

    def __init__(self, arrays: Batch, spec: DataSpec, identity: str = "", source: str = ""):
        super().__init__(None, None, len(arrays["image"]), spec, identity, source)
        self.arrays = arrays

    def read(self, indices: np.ndarray) -> Batch:
        return {k: v[indices] for k, v in self.arrays.items()}


# ----------------------------------------------------------------------------- decoding
class _Decode:
    """A record to (uint8 HWC image, label), converted to data.image_size and data.channels where
    set: a TFDS record is a dict; a cache record (`shape` given) a label and pixels
    (`folder.record`)."""

    def __init__(self, labelled: bool, size: int, channels: int, shape: tuple | None = None):
        self.labelled, self.size, self.channels, self.shape = labelled, size, channels, shape

    def __call__(self, record) -> tuple[np.ndarray, int]:
        if self.shape is None:
            image, label = record["image"], int(record["label"]) if self.labelled else 0
        else:
            label = int.from_bytes(record[:4], "little", signed=True)
            image = np.frombuffer(record, np.uint8, offset=4).reshape(self.shape)
        if self.size or (self.channels and image.shape[-1] != self.channels):
            pil = folder_lib.from_array(image)
            mode = folder_lib.CHANNEL_MODES[self.channels] if self.channels else pil.mode
            image = folder_lib.conform(pil, mode, self.size)
        return image, label


def _shape(data_config: ml_collections.ConfigDict, stored: tuple, name: str) -> tuple:
    """The image shape a split is read in: as stored, or data.image_size and data.channels."""
    channels = data_config.channels or stored[-1]
    if data_config.image_size:
        return (data_config.image_size, data_config.image_size, channels)
    if None in stored[:2]:
        raise GenJaxError(
            f"dataset '{name}' has images of varying size {stored}; set data.image_size to "
            "resize the shorter side and centre-crop them to one square size"
        )
    return (*stored[:2], channels)


def _count(available: int, data_config: ml_collections.ConfigDict) -> int:
    return min(available, data_config.max_examples) if data_config.max_examples else available


# ----------------------------------------------------------------------------- TFDS
def data_dir(data_config: ml_collections.ConfigDict) -> str | None:
    """The TFDS directory: `data.data_dir` if set, else $TFDS_DATA_DIR, else tfds' default."""
    return data_config.data_dir or os.environ.get("TFDS_DATA_DIR") or None


class NotPrepared(GenJaxError):
    """No prepared TFDS copy of the dataset is found where it is looked for."""


@functools.lru_cache(maxsize=8)  # "auto" opens the training split once to decide, then reads it
def _tfds_source(name: str, split: str, directory: str | None):
    import tensorflow_datasets as tfds  # heavy import, only when data is needed

    searched = directory or "tfds' default directory (~/tensorflow_datasets)"
    remedy = (
        f"Point config.data.data_dir or $TFDS_DATA_DIR at a directory holding {name}/ in "
        "array_record format (MNIST: ../shared/data/tensorflow_datasets), or build it with "
        f"`pip install -e .[prepare]` and `tfds build {name} --file_format=array_record`; "
        "for a folder of images set config.data.folder instead."
    )
    if directory and not (Path(directory) / name).is_dir():
        raise NotPrepared(f"dataset '{name}' not found: {searched} has no {name}/ folder\n{remedy}")
    try:
        source = tfds.data_source(name, split=split, data_dir=directory, download=False)
        info = tfds.builder(name, data_dir=directory).info
    except Exception as error:  # tfds raises several types for "not prepared here"
        reason = str(error).splitlines()[0] if str(error) else ""
        found = (Path(directory) if directory else Path.home() / "tensorflow_datasets") / name
        # a copy that is there but cannot be read is an error to mend, not a reason to download
        kind = GenJaxError if found.is_dir() else NotPrepared
        raise kind(
            f"dataset '{name}' (split '{split}') cannot be read from {searched}: "
            f"{type(error).__name__}: {reason}\n{remedy}"
        ) from None
    return source, info.features, str(info.version)


def _tfds_split(data_config: ml_collections.ConfigDict, split: str) -> Split:
    name = data_config.name
    source, features, version = _tfds_source(name, split, data_dir(data_config))
    if "image" not in features:
        raise GenJaxError(
            f"TFDS dataset '{name}' has no 'image' feature (its features: "
            f"{', '.join(sorted(features))}); gen_jax reads images from 'image'"
        )
    shape = _shape(data_config, tuple(features["image"].shape), name)
    labelled = "label" in features
    names = tuple(getattr(features["label"], "names", ())) if labelled else ()
    spec = DataSpec(shape, names, labelled)
    decode = _Decode(labelled, data_config.image_size, data_config.channels)
    count = _count(len(source), data_config)
    directory = data_dir(data_config)  # resolved: a relative and an absolute path name one
    where = str(Path(directory).resolve()) if directory else "default"
    size = "x".join(map(str, shape))
    identity = f"tfds/{where}/{name}/{version}/{split}/{size}/{count}"
    return Split(source, decode, count, spec, identity, f"tfds:{name} {version} ({where})")


# ----------------------------------------------------------------------------- canonical files
def _canonical_split(data_config: ml_collections.ConfigDict, split: str) -> Split:
    name = data_config.name
    if name not in canonical.DATASETS:
        raise GenJaxError(
            f"data.source='download' fetches {', '.join(sorted(canonical.DATASETS))}, not "
            f"'{name}'; prepare '{name}' with TFDS (data.source='tfds') or use data.folder"
        )
    path, meta = canonical.cached(data_config, split)
    shape = _shape(data_config, tuple(meta["shape"]), name)
    spec = DataSpec(shape, tuple(meta["class_names"]), True)
    records = _cached_records(path, meta)
    decode = _Decode(True, data_config.image_size, data_config.channels, tuple(meta["shape"]))
    count = _count(meta["count"], data_config)
    size = "x".join(map(str, shape))
    identity = f"download/{name}/{meta['sha256'][:16]}/{split}/{size}/{count}"
    described = f"download:{name} (canonical files, their order; {path.parent})"
    return Split(records, decode, count, spec, identity, described)


@functools.lru_cache(maxsize=8)
def _resolved(key: str) -> tuple[str, str]:
    """Where `data.name` is read from, decided once for every split of a data config: ("tfds" |
    "download", why a download). "auto" is TFDS where a prepared copy of the training split is
    found, else the dataset's canonical files (if it has any)."""
    data_config = ml_collections.ConfigDict(json.loads(key))
    if data_config.source not in SOURCES:
        raise GenJaxError(f"unknown data.source '{data_config.source}'; use one of {SOURCES}")
    if data_config.source != "auto":
        return data_config.source, ""
    name = data_config.name
    try:
        _tfds_source(name, data_config.train_split, data_dir(data_config))
        return "tfds", ""
    except NotPrepared as missing:
        if name not in canonical.DATASETS:
            raise
        print(
            f"gen-jax: no prepared TFDS copy of {name} ({str(missing).splitlines()[0]}); "
            "reading its canonical files instead",
            file=sys.stderr,
        )
        return "download", str(missing)


def _by_name(key: str, data_config: ml_collections.ConfigDict, split: str) -> Split:
    """`data.name` from a prepared TFDS copy, or its canonical files (`data.source`)."""
    source, missing = _resolved(key)
    if source == "tfds":
        return _tfds_split(data_config, split)
    try:
        return _canonical_split(data_config, split)
    except GenJaxError as error:
        if not missing:
            raise
        raise GenJaxError(f"{missing}\nIts canonical files: {error}") from None


SOURCES = ("auto", "tfds", "download")  # data.source: auto is TFDS where prepared, else download


# ----------------------------------------------------------------------------- folders
def _cached_records(path: Path, meta: dict):
    """The records of an array_record cache (`folder.write_cache`), checked against its count."""
    import grain

    records = grain.sources.ArrayRecordDataSource([str(path)])
    if len(records) != meta["count"]:
        raise GenJaxError(f"the image cache {path.parent} is damaged; delete it to rebuild it")
    return records


def _folder_split(data_config: ml_collections.ConfigDict, split: str) -> Split:
    path, meta = folder_lib.cached(data_config, split)
    shape = tuple(meta["shape"])
    spec = DataSpec(shape, tuple(meta["class_names"]), meta["labelled"], len(meta["skipped"]))
    records = _cached_records(path, meta)
    decode = _Decode(meta["labelled"], 0, 0, shape)  # sized and converted in the cache
    count = _count(meta["count"], data_config)
    # the decoded records' hash, not the cache key: a copy of the same files (new paths or
    # modification times) decodes to the same images, whose cached features still hold
    identity = f"folder/{meta['sha256']}/{count}"
    if count < meta["count"]:  # stored class by class: the first N would be the first classes
        labels = _record_labels(records)
        records = Subset(records, stratified_subset(labels, count))
        identity = f"folder/{meta['sha256']}/{count}-of-{len(labels)}-stratified-{SUBSET_SEED}"
    return Split(records, decode, count, spec, identity, f"folder:{data_config.folder}")


SUBSET_SEED = 0  # the same data.max_examples subset for every run and process


def stratified_subset(labels: np.ndarray, count: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """`count` indices into `labels`, in ascending order, drawn at random (`seed`), each class's
    share proportional to its size (largest remainders)."""
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / len(labels)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(quota - exact, kind="stable")[: count - quota.sum()]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:q]
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _record_labels(records) -> np.ndarray:
    """The label of every folder-cache record (its first 4 bytes)."""
    labels = []
    for start in range(0, len(records), DECODE_CHUNK):
        chunk = records.__getitems__(list(range(start, min(start + DECODE_CHUNK, len(records)))))
        labels += [int.from_bytes(record[:4], "little", signed=True) for record in chunk]
    return np.asarray(labels)


class Subset:
    """Records `index` of `records`, numbered 0, 1, ... (picklable, for grain's workers)."""

    def __init__(self, records, index: np.ndarray):
        self.records, self.index = records, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices: list[int]) -> list[bytes]:
        return self.records.__getitems__([int(self.index[i]) for i in indices])


# ----------------------------------------------------------------------------- splits
SOURCE_KEYS = (
    "name",
    "source",
    "mirrors",
    "folder",
    "train_split",  # a folder's other splits must have its class folders
    "image_size",
    "channels",
    "skip_unreadable",
    "cache_dir",
    "max_examples",
)


def _key(data_config: ml_collections.ConfigDict) -> str:
    """The settings that decide a split's examples (the cache key of the opened splits)."""
    settings = {key: data_config[key] for key in SOURCE_KEYS}
    return json.dumps({**settings, "data_dir": data_dir(data_config)}, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _open(key: str, split: str) -> Split:
    data_config = ml_collections.ConfigDict(json.loads(key))
    if data_config.folder:
        return _folder_split(data_config, split)
    return _by_name(key, data_config, split)


def open_split(data_config: ml_collections.ConfigDict, split: str) -> Split:
    """A split read from disk by index (opened once per process)."""
    return _open(_key(data_config), split)


@functools.lru_cache(maxsize=4)
def _load(key: str, split: str) -> InMemory:
    source = _open(key, split)
    parts = [
        source.read(np.arange(start, min(start + DECODE_CHUNK, len(source))))
        for start in range(0, len(source), DECODE_CHUNK)
    ]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return InMemory(arrays, source.spec, source.identity, source.source)


def load_split(data_config: ml_collections.ConfigDict, split: str) -> Batch:
    """All examples of `split` as in-memory arrays (decoded once per process, then kept)."""
    return _load(_key(data_config), split).arrays


def get_split(data_config: ml_collections.ConfigDict, split: str) -> Split:
    """The split in memory, or read from disk by index when its decoded images exceed
    `data.memory_budget` bytes or `data.streaming` is set."""
    source = open_split(data_config, split)
    if not fits_in_memory(data_config, source):
        return source
    return _load(_key(data_config), split)


def fits_in_memory(data_config: ml_collections.ConfigDict, source: Split) -> bool:
    """Whether `get_split` decodes this opened split into memory (or streams it from disk)."""
    return not data_config.streaming and source.nbytes() <= data_config.memory_budget


def describe(data_config: ml_collections.ConfigDict) -> DataSpec:
    """The image shape and class names of the training split."""
    return open_split(data_config, data_config.train_split).spec


def clear_cache() -> None:
    """Forget the opened and decoded splits kept in memory (they are reread on next use)."""
    _open.cache_clear()
    _load.cache_clear()
    _resolved.cache_clear()
    _tfds_source.cache_clear()


def channel_stats(data_config: ml_collections.ConfigDict, limit: int = 10_000) -> dict:
    """Per-channel mean and std of the first `limit` training images, in [0, 1] units: the
    values of data.mean and data.std for the 'normalize' step."""
    split = open_split(data_config, data_config.train_split)
    images = split.read(np.arange(min(limit, len(split))))["image"] / 255.0
    axes = tuple(range(images.ndim - 1))
    return {
        key: tuple(float(v) for v in getattr(images, key)(axes).round(4)) for key in ("mean", "std")
    }
