"""The standard datasets from their canonical files, fetched on first use, without TensorFlow:
MNIST and Fashion-MNIST (the four IDX files each) and CIFAR-10 (the python pickle batches).

The files are downloaded into `<cache>/downloads/<name>/` (`download.fetch`: mirrors, checksums,
resumed partial downloads) and written once into an array_record cache per split in gen_jax's
cache format (`folder.write_cache`), in the files' own order, which differs from the order of
TFDS's prepared copies. `sources` reads a prepared TFDS copy where there is one (so a run's numbers
stay those of that copy), and these files otherwise.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import ml_collections
import numpy as np

from gen_jax.data import folder as folder_lib
from gen_jax.data.download import RemoteFile, fetch, mirrors
from gen_jax.errors import GenJaxError

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 NHWC images, labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's canonical files, where they are served, and how they become split arrays."""

    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]  # base URLs, the canonical host first
    read: Callable[[dict[str, Path]], Arrays]  # file name -> its path, to every split's arrays
    class_names: tuple[str, ...]
    citation: str


# ----------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: a zero word's type byte 0x08 for uint8, a dimension count,
    big-endian int32 sizes, then the data) as a uint8 array."""
    with gzip.open(path, "rb") as file:
        raw = file.read()
    kind, dims = raw[2], raw[3]
    if raw[:2] != b"\0\0" or kind != 0x08:
        raise GenJaxError(f"{path} is not an IDX file of unsigned bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _read_idx_splits(paths: dict[str, Path]) -> Arrays:
    return {
        split: (
            read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])[..., None],
            read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"]).astype(np.int32),
        )
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


def _idx_files(listing: str) -> tuple[RemoteFile, ...]:
    """The .gz files of a `sha256sum` listing of their decompressed contents."""
    return tuple(
        RemoteFile(f"{name}.gz", digest, gunzipped=True)
        for digest, name in map(str.split, listing.split("\n"))
    )


# sha256 of the decompressed files (as in ../shared/data/README.md)
MNIST_SHA256 = """\
ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte
65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte
0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte
ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte"""
FASHION_MNIST_SHA256 = """\
c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888  train-images-idx3-ubyte
bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9  train-labels-idx1-ubyte
5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b  t10k-images-idx3-ubyte
0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34  t10k-labels-idx1-ubyte"""


# ----------------------------------------------------------------------------- CIFAR-10
class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts of numpy arrays, lists and bytes, and nothing that could
    run code (a pickle names the functions it calls)."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle (a copy's)
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise GenJaxError(f"the CIFAR-10 archive's pickle asks for {module}.{name}; refused")
        return super().find_class(module, name)


def _read_cifar_splits(paths: dict[str, Path]) -> Arrays:
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    with tarfile.open(paths["cifar-10-python.tar.gz"], "r:gz") as archive:
        unpickled = {}
        for member in archive.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in batches["train"] + batches["test"]:
                data = archive.extractfile(member).read()
                unpickled[name] = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    missing = [n for names in batches.values() for n in names if n not in unpickled]
    if missing:
        raise GenJaxError(f"the CIFAR-10 archive lacks {', '.join(missing)}")

    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.concatenate([np.asarray(unpickled[n][b"data"], np.uint8) for n in names])
        labels = np.concatenate([np.asarray(unpickled[n][b"labels"], np.int32) for n in names])
        return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # stored as planes

    return {name: split(names) for name, names in batches.items()}


# ----------------------------------------------------------------------------- the datasets
DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        files=_idx_files(MNIST_SHA256),
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TFDS's
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
            "http://yann.lecun.com/exdb/mnist/",
        ),
        read=_read_idx_splits,
        class_names=tuple("0123456789"),  # as TFDS names them
        citation="Y. LeCun, C. Cortes, C. J. C. Burges, the MNIST database",
    ),
    "fashion_mnist": Dataset(
        files=_idx_files(FASHION_MNIST_SHA256),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras'
        ),
        read=_read_idx_splits,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        citation="H. Xiao, K. Rasul, R. Vollgraf, Fashion-MNIST, 2017",
    ),
    "cifar10": Dataset(
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                170_498_071,
            ),
        ),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        read=_read_cifar_splits,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        citation="A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
    ),
}
CACHE_LAYOUT = 1  # bump when the split arrays or their records change
SPLITS = ("train", "test")  # of every dataset here, named as TFDS names them


def downloads_folder(data_config: ml_collections.ConfigDict) -> Path:
    """Where a dataset's canonical files are kept (or put by hand)."""
    return folder_lib.cache_root(data_config) / "downloads" / data_config.name


def cached(data_config: ml_collections.ConfigDict, split: str) -> tuple[Path, dict]:
    """One split of `data.name`'s canonical files as an array_record cache and its metadata:
    the files fetched and every split written on first use (under a lock: several processes of
    one run may ask at once)."""
    if split not in SPLITS:
        raise GenJaxError(
            f"{data_config.name}'s canonical files have the splits {', '.join(SPLITS)}, not "
            f"'{split}'; set data.train_split and data.eval_split to those"
        )
    dataset = DATASETS[data_config.name]
    key = json.dumps([CACHE_LAYOUT, data_config.name, [f.sha256 for f in dataset.files]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = folder_lib.cache_root(data_config) / "datasets"
    folder_of = lambda name: root / f"{data_config.name}-{name}-{digest}"
    meta = folder_lib.read_meta(folder_of(split), key)
    if meta is None:
        downloads = downloads_folder(data_config)
        downloads.mkdir(parents=True, exist_ok=True)
        with open(downloads / ".lock", "w") as lock:
            _lock(lock, downloads)  # released when the file closes
            meta = folder_lib.read_meta(folder_of(split), key)  # another process's, meanwhile
            if meta is None:
                _build(data_config, dataset, downloads, folder_of, key)
                meta = folder_lib.read_meta(folder_of(split), key)
    return folder_of(split) / "images.array_record", meta


def _lock(file, downloads: Path) -> None:
    """Hold `file`'s exclusive lock, saying so while another process holds it."""
    import fcntl  # POSIX only: imported where a download needs it

    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"gen-jax: waiting for another process's download into {downloads}", file=sys.stderr)
        fcntl.flock(file, fcntl.LOCK_EX)


def _build(data_config, dataset: Dataset, downloads: Path, folder_of, key: str) -> None:
    """Fetch the dataset's files and write each split's cache."""
    bases = mirrors(data_config.name, tuple(data_config.mirrors), dataset.mirrors)
    names = ", ".join(f.name for f in dataset.files)
    manual = f"Offline? Put {names} ({dataset.citation}), as served, into {downloads} by hand"
    manual += (
        "."
        if data_config.source == "download"
        else ", or point config.data.data_dir or $TFDS_DATA_DIR at a prepared TFDS copy of it."
    )
    paths = {f.name: fetch(f, downloads, bases, manual) for f in dataset.files}
    print(f"gen-jax: writing {data_config.name}'s splits into {folder_of('*')}", file=sys.stderr)
    for split, (images, labels) in dataset.read(paths).items():

        def fill(writer, images=images, labels=labels) -> dict:
            for image, label in zip(images, labels, strict=True):
                writer.write(folder_lib.record(int(label), image))
            return {
                "count": len(images),
                "shape": list(images.shape[1:]),
                "class_names": list(dataset.class_names),
                "labelled": True,
                "skipped": [],
                "files": {f.name: f.sha256 for f in dataset.files},
            }

        folder_lib.write_cache(folder_of(split), key, fill)
