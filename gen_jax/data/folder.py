"""Image folders (`root/<split>/<class>/*.jpg`, or `root/<split>/*.jpg` unlabelled), decoded once,
in parallel, into an array_record cache outside the folder, which may be read-only.

The cache is keyed by the folder's file list, sizes and modification times and the decoding
settings, so a changed folder builds a new one. A cache is used only when its metadata, written
last, matches its format version and the sha256 of its records; anything else is rebuilt.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from gen_jax.errors import GenJaxError

SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1  # bump when the record layout or the decoding changes
CHUNK = 1024  # images decoded per parallel batch while writing the cache
MODES = {"1": "L", "L": "L", "P": "RGB", "RGB": "RGB", "RGBA": "RGBA"}  # decoded as
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # data.channels -> the mode converted to


@dataclasses.dataclass(frozen=True)
class Listing:
    """A split folder's image files in a fixed order, their labels and the sorted class names."""

    files: tuple[Path, ...]
    labels: tuple[int, ...] | None  # None: unlabelled
    class_names: tuple[str, ...]


_NOTED: set[Path] = set()  # folders whose hidden entries this process reported


def _entries(folder: Path) -> list[Path]:
    """The folder's entries, less hidden ones (`.ipynb_checkpoints`, `.DS_Store`, ...), which
    are never classes, splits or images; skipped with a note."""
    entries = sorted(folder.iterdir())
    hidden = [p.name for p in entries if p.name.startswith(".")]
    if hidden and folder not in _NOTED:
        _NOTED.add(folder)
        print(f"gen-jax: skipped hidden entries in {folder}: {', '.join(hidden)}", file=sys.stderr)
    return [p for p in entries if not p.name.startswith(".")]


def _images_in(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_file() and p.suffix.lower() in SUFFIXES]


def class_names(root: Path, split: str) -> tuple[str, ...]:
    """The sorted class folder names of `root/split` (none: unlabelled)."""
    return tuple(p.name for p in _entries(root / split) if p.is_dir())


def check_same_classes(root: Path, split: str, train_split: str) -> None:
    """Labels are positions in the training split's class list, so every other split must have
    exactly its class folders: a missing or differently spelt one would shift every later label."""
    expected, found = class_names(root, train_split), class_names(root, split)
    if found != expected:
        missing = sorted(set(expected) - set(found)) or "none"
        extra = sorted(set(found) - set(expected)) or "none"
        raise GenJaxError(
            f"the class folders of {root / split} differ from those of the training split "
            f"{root / train_split}, whose order numbers the labels: missing {missing}, extra "
            f"{extra}. Give every split the same class folders (same spelling and case)."
        )


def list_split(root: Path, split: str) -> Listing:
    """The images of `root/split`: per sorted class folder if it has sub-folders, else its own."""
    if not root.is_dir():
        raise GenJaxError(
            f"data.folder {root} does not exist or is not a folder; point it at a folder holding "
            "one sub-folder per split, e.g. train/ and test/"
        )
    folder = root / split
    if not folder.is_dir():
        found = [p.name for p in _entries(root) if p.is_dir()] or "none"
        raise GenJaxError(
            f"data.folder {root} has no '{split}' split folder (split folders there: {found}); "
            "set data.train_split and data.eval_split to two of them"
        )
    classes = [p for p in _entries(folder) if p.is_dir()]
    loose = _images_in(folder)
    if not classes:
        if not loose:
            raise GenJaxError(
                f"{folder} has no images ({', '.join(SUFFIXES)}) and no class folders"
            )
        return Listing(tuple(loose), None, ())
    if loose:
        raise GenJaxError(
            f"{folder} holds class folders and also images outside them (e.g. {loose[0].name}); "
            "move those into a class folder, or the class folders' images up, for unlabelled data"
        )
    files, labels = [], []
    for label, class_folder in enumerate(classes):
        images = _images_in(class_folder)
        if not images:
            raise GenJaxError(
                f"class folder {class_folder} has no images ({', '.join(SUFFIXES)}); add some "
                "or remove the folder"
            )
        files += images
        labels += [label] * len(images)
    return Listing(tuple(files), tuple(labels), tuple(p.name for p in classes))


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (antialiased bilinear), then crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BILINEAR) if new != image.size else image
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def from_array(array: np.ndarray) -> Image.Image:
    """A uint8 (H, W) or (H, W, C) array as a Pillow image."""
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def conform(image: Image.Image, mode: str, size: int) -> np.ndarray:
    """`image` converted to `mode` and, if `size`, fitted to that square (`fit_image`), as uint8
    (H, W, C): how every image is decoded, from a folder, a TFDS record or a user's array."""
    image = image.convert(mode)
    array = np.asarray(fit_image(image, size) if size else image, np.uint8)
    return array[..., None] if array.ndim == 2 else array


# ----------------------------------------------------------------------------- checks
def _header(path: Path) -> tuple[tuple[int, int], str] | None:
    """(width, height) and mode from the file's header, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _check_uniform(headers: dict[Path, tuple], data_config: ml_collections.ConfigDict) -> str:
    """The mode every image is decoded to; a mix of sizes (without data.image_size) or of
    channel counts (without data.channels) is an error naming two files."""
    if not data_config.image_size:
        sizes = {}
        for path, (size, _) in headers.items():
            sizes.setdefault(size, path)
        if len(sizes) > 1:
            (a, path_a), (b, path_b) = list(sizes.items())[:2]
            raise GenJaxError(
                f"the images differ in size: {path_a} is {a[0]}x{a[1]}, {path_b} is "
                f"{b[0]}x{b[1]} (width x height); set data.image_size to resize the shorter side "
                "and centre-crop them all to one square size"
            )
    if data_config.channels:
        if data_config.channels not in CHANNEL_MODES:
            raise GenJaxError(
                f"data.channels must be 0 (as the images are) or one of "
                f"{sorted(CHANNEL_MODES)}, not {data_config.channels}"
            )
        return CHANNEL_MODES[data_config.channels]
    modes = {}
    for path, (_, mode) in headers.items():
        if mode not in MODES:
            raise GenJaxError(
                f"{path} has image mode '{mode}', which gen_jax does not decode; set "
                "data.channels to 1 or 3 to convert every image"
            )
        modes.setdefault(MODES[mode], (path, mode))
    if len(modes) > 1:
        (path_a, mode_a), (path_b, mode_b) = list(modes.values())[:2]
        raise GenJaxError(
            f"the images mix channel counts: {path_a} is '{mode_a}', {path_b} is '{mode_b}'; "
            "set data.channels (1 gray, 3 color) to convert them all"
        )
    return next(iter(modes))


def _decode(path: Path, mode: str, size: int) -> np.ndarray | None:
    """The image as uint8 (H, W, C), or None if its data cannot be decoded."""
    try:
        with Image.open(path) as image:
            return conform(image, mode, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _unreadable_error(bad: list[Path]) -> GenJaxError:
    return GenJaxError(
        f"{len(bad)} image file(s) cannot be read, e.g. {bad[0]}; replace or remove them, or set "
        "data.skip_unreadable=True to train without them"
    )


# ----------------------------------------------------------------------------- the cache
def user_cache_root() -> Path:
    """$XDG_CACHE_HOME/gen_jax, else ~/.cache/gen_jax."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gen_jax"


def cache_root(data_config: ml_collections.ConfigDict) -> Path:
    """data.cache_dir, else the user's cache (`user_cache_root`)."""
    return Path(data_config.cache_dir) if data_config.cache_dir else user_cache_root()


def fingerprint(listing: Listing, data_config: ml_collections.ConfigDict) -> str:
    """A hash of the file list, each file's size and modification time, and the settings that
    change the decoded images."""
    digest = hashlib.sha256()
    settings = {key: data_config[key] for key in ("image_size", "channels", "skip_unreadable")}
    digest.update(json.dumps([CACHE_VERSION, settings, listing.labels]).encode())
    for path in listing.files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(folder: Path, key: str) -> dict | None:
    """The cache's metadata if it is complete, of this version and key, and its records are
    intact; else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
            return None
        if _file_sha256(folder / "images.array_record") != meta["sha256"]:
            return None
        return meta
    except (OSError, ValueError, KeyError):
        return None


def write_cache(folder: Path, key: str, fill: Callable[[Any], dict]) -> dict:
    """Write an array_record cache into `folder`: `fill(writer)` writes its records (a little-
    endian int32 label, then the raw uint8 pixels) and returns its metadata (count, shape,
    class_names, labelled, ...), which meta.json gets with the key and the records' sha256. It is
    written in a temporary folder renamed into place, so a killed build leaves no cache that looks
    complete."""
    from array_record.python.array_record_module import ArrayRecordWriter

    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        writer = ArrayRecordWriter(str(temporary / "images.array_record"), "group_size:1")
        try:
            filled = fill(writer)
        finally:
            writer.close()
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            **filled,
            "sha256": _file_sha256(temporary / "images.array_record"),
        }
        (temporary / "meta.json").write_text(json.dumps(meta))
        # Another process (a host of the same run) may have finished the same cache while this
        # one wrote: keep it, which that process may already be reading, and remove only an
        # outdated or damaged one.
        if read_meta(folder, key) is None:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                temporary.rename(folder)
            except OSError:  # ... or finished it just now
                if read_meta(folder, key) is None:
                    raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return meta


def record(label: int, image: np.ndarray) -> bytes:
    """One cache record: the label as a little-endian int32, then the image's uint8 pixels."""
    return np.int32(label).astype("<i4").tobytes() + image.tobytes()


def build(listing: Listing, data_config: ml_collections.ConfigDict, folder: Path, key: str):
    """Decode every image of the listing (threads: Pillow releases the GIL) into the cache
    `folder` (`write_cache`)."""
    workers = min(32, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        headers = dict(zip(listing.files, pool.map(_header, listing.files), strict=True))
        bad = [path for path, header in headers.items() if header is None]  # and more below
        mode = _check_uniform({p: h for p, h in headers.items() if h}, data_config)
        labels = listing.labels or (0,) * len(listing.files)
        pairs = zip(listing.files, labels, strict=True)
        readable = [(path, label) for path, label in pairs if headers[path]]
        decode = lambda item: _decode(item[0], mode, data_config.image_size)

        def fill(writer) -> dict:
            shape, count = None, 0
            for start in range(0, len(readable), CHUNK):
                chunk = readable[start : start + CHUNK]
                for (path, label), array in zip(chunk, pool.map(decode, chunk), strict=True):
                    if array is None:  # a readable header, but data that do not decode
                        bad.append(path)
                        continue
                    shape = shape or array.shape
                    writer.write(record(label, array))
                    count += 1
            if bad and not data_config.skip_unreadable:
                raise _unreadable_error(bad)
            if not count:
                raise GenJaxError(f"none of the {len(listing.files)} images can be read")
            return {
                "count": count,
                "shape": list(shape),
                "class_names": list(listing.class_names),
                "labelled": listing.labels is not None,
                "skipped": [str(p) for p in bad],
            }

        meta = write_cache(folder, key, fill)
    if bad:
        print(f"gen-jax: skipped {len(bad)} unreadable image(s), e.g. {bad[0]}", file=sys.stderr)
    return meta


def cached(data_config: ml_collections.ConfigDict, split: str) -> tuple[Path, dict]:
    """The cache of one split of `data.folder` (built or rebuilt when needed) and its metadata."""
    listing = list_split(Path(data_config.folder), split)
    if split != data_config.train_split:
        check_same_classes(Path(data_config.folder), split, data_config.train_split)
    key = fingerprint(listing, data_config)
    folder = cache_root(data_config) / "folders" / key[:32]
    meta = read_meta(folder, key)
    if meta is None:
        if (folder / "meta.json").exists():
            print(
                f"gen-jax: the image cache {folder} is damaged or outdated; rebuilding it",
                file=sys.stderr,
            )
        print(
            f"gen-jax: decoding {len(listing.files)} images of {listing.files[0].parent.parent}"
            f" into {folder}",
            file=sys.stderr,
        )
        meta = build(listing, data_config, folder, key)
    return folder / "images.array_record", meta
