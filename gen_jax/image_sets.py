"""The image sets that `gen-jax fid A B` compares, and the comparison itself.

A set is named by one string:
- a folder of images (.png, .jpg, .jpeg, searched recursively; hidden entries skipped), e.g.
  `../shared/data/cifar10_jpeg/test`; sizes may differ, each image is resized by the protocol;
- an `.npz` file holding one array of images (N, H, W, C) or (N, C, H, W), C 1 or 3: uint8, or
  float in [0, 1];
- a gen_jax run's workdir: that many of its samples (`Run.sample`, seed 0);
- `tfds:NAME:SPLIT`, a prepared TFDS dataset (e.g. `tfds:mnist:train`; where none is prepared,
  MNIST, Fashion-MNIST and CIFAR-10 come from their canonical files), or `folder:ROOT:SPLIT`, a
  split of an image-folder dataset (`ROOT/SPLIT/<class>/*.jpg`, as `data.folder` reads it): their
  features are cached, and computed in slices that a stopped run resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from gen_jax import inception, sample_quality
from gen_jax.data.folder import CHANNEL_MODES, SUFFIXES, conform
from gen_jax.errors import GenJaxError
from gen_jax.feature_spaces import Inception, check_images, reference_features

RUN_SAMPLES = 10_000  # samples of a run when --num is not given


@dataclasses.dataclass
class ImageSet:
    """One side of a comparison: its Inception features and what they came from."""

    source: str
    features: np.ndarray
    kind: str


def _folder_images(folder: Path, count: int, seed: int) -> list[np.ndarray]:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise GenJaxError(f"{folder} holds no images ({', '.join(SUFFIXES)}), even in sub-folders")
    chosen = [files[i] for i in sample_quality.reference_rows(len(files), count, seed)]
    images = []
    for path in chosen:
        try:
            with Image.open(path) as image:
                mode = "L" if image.mode in ("1", "L", "I;16") else CHANNEL_MODES[3]
                images.append(conform(image, mode, 0))
        except OSError as error:
            raise GenJaxError(f"cannot read {path} as an image ({error}); remove it") from None
    return images


def _npz_images(path: Path, count: int, seed: int) -> np.ndarray:
    with np.load(path) as stored:
        if len(stored.files) != 1 and "images" not in stored.files:
            raise GenJaxError(
                f"{path} holds {stored.files}: give one array, or name the images 'images'"
            )
        images = stored["images" if "images" in stored.files else stored.files[0]]
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW, as torch writes them
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise GenJaxError(
                f"{path}: images must be uint8 or float in [0, 1], not {images.dtype}"
            )
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise GenJaxError(
                f"{path}: float images must be in [0, 1], these span [{low:.3g}, {high:.3g}]; "
                "map them first (e.g. (x + 1) / 2 for [-1, 1]), or save uint8"
            )
        images = np.round(images * 255.0).astype(np.uint8)
    check_images(images)
    return images[sample_quality.reference_rows(len(images), count, seed)]


DATASET_KINDS = ("tfds", "folder")


def _dataset_config(
    kind: str, name: str, split: str, data_dir: str | None
) -> ml_collections.ConfigDict:
    from gen_jax import config as config_lib

    config = config_lib.base_config()
    config.data.train_split = split  # a set of its own: its classes are not compared
    if kind == "tfds":
        config.data.name, config.data.data_dir = name, data_dir or ""
    else:
        config.data.folder = name
    return config_lib.with_absolute_paths(config).data  # paths as a run's config has them


def load(source: str, space: Inception, count: int = 0, data_dir: str | None = None, seed=0):
    """The `ImageSet` that `source` names (see the module's docstring), `count` images of it
    (0: all; a run: RUN_SAMPLES), a seeded random subset where it holds more."""
    kind = source.split(":")[0]
    if kind in DATASET_KINDS:
        parts = source.split(":")
        if len(parts) != 3:
            raise GenJaxError(
                f"name a dataset split as tfds:NAME:SPLIT (e.g. tfds:mnist:train) or "
                f"folder:ROOT:SPLIT, not {source}"
            )
        data_config = _dataset_config(kind, parts[1], parts[2], data_dir)
        return ImageSet(source, reference_features(space, data_config, parts[2], count), "dataset")
    path = Path(source)
    if not path.exists():
        raise GenJaxError(
            f"{source} does not exist: give a folder of images, an .npz of images, a gen_jax "
            "run's workdir, tfds:NAME:SPLIT or folder:ROOT:SPLIT"
        )
    if path.is_dir() and (path / "config.json").is_file():
        from gen_jax.run import load_run

        samples = load_run(path).sample(count or RUN_SAMPLES, seed)
        levels = np.round(np.clip(samples, 0.0, 1.0) * 255.0).astype(np.uint8)
        return ImageSet(source, space.features(levels, progress=f"samples of {source}"), "run")
    if path.is_dir():
        images = _folder_images(path, count, seed)
        return ImageSet(source, _features_by_size(space, images, source), "folder")
    if path.suffix == ".npz":
        features = space.features(_npz_images(path, count, seed), progress=source)
        return ImageSet(source, features, "npz")
    raise GenJaxError(f"{source} is neither a folder, an .npz file, nor a gen_jax run")


def _features_by_size(space: Inception, images: list[np.ndarray], what: str) -> np.ndarray:
    """Features of images of possibly different sizes and channels, batched by shape."""
    features = np.zeros((len(images), inception.FEATURES), np.float32)
    shapes = sorted({image.shape for image in images})
    for shape in shapes:
        rows = [i for i, image in enumerate(images) if image.shape == shape]
        stacked = np.stack([images[i] for i in rows])
        features[rows] = space.features(stacked, progress=f"{what} ({len(rows)} of {shape})")
    return features


def compare(a: ImageSet, b: ImageSet, neighbours: int = 3, seed: int = 0) -> dict:
    """FID, KID (mean and standard deviation over subsets) and precision / recall of `b`
    against `a`, with the protocol and the counts."""
    kid, kid_std = sample_quality.kernel_inception_distance(a.features, b.features, seed=seed)
    precision, recall = sample_quality.precision_recall(a.features, b.features, neighbours)
    subset = min(sample_quality.KID_SUBSET_SIZE, len(a.features), len(b.features))
    return {
        "fid": sample_quality.frechet_distance(a.features, b.features),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "protocol": inception.PROTOCOL,
        "a": {"source": a.source, "kind": a.kind, "images": len(a.features)},
        "b": {"source": b.source, "kind": b.kind, "images": len(b.features)},
        "kid_subsets": f"{sample_quality.KID_SUBSETS} of {subset}",
        "neighbours": neighbours,
    }
