"""Plain helpers about the repository, workdirs, pytrees and files that tests read or damage."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def assert_trees_equal(a, b) -> None:
    """Two pytrees of the same structure whose leaves are equal, bit for bit."""
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def copied_run(run: Path, destination: Path) -> Path:
    """A copy of the run in `run` at `destination`, for a test that changes it."""
    shutil.copytree(run, destination, symlinks=True)
    return destination


@contextlib.contextmanager
def disk_full_after(size: int) -> Iterator[None]:
    """Writes past `size` bytes of any file fail in this process, as on a full disk (the soft
    RLIMIT_FSIZE, with SIGXFSZ ignored so the write raises instead of killing the process)."""
    import resource

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def in_ci() -> bool:
    """Whether the tests run in CI (`CI` set, as CI services and .ci/run do)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def make_image_folder(
    root: Path,
    splits: dict[str, int],
    shape: tuple[int, int, int] = (12, 12, 3),
    classes: tuple[str, ...] = ("cat", "dog", "owl"),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """`root/<split>/<class>/NNN.png` (unlabelled `root/<split>/NNN.png` when `classes` is
    empty) of random uint8 images, `count` per split dealt round-robin to the classes; returns
    each split's images in the order a labelled listing sorts them (class, then file name)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split, count in splits.items():
        images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        for i, image in enumerate(images):
            folder = root / split / classes[i % len(classes)] if classes else root / split
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0] if shape[-1] == 1 else image).save(
                folder / f"{i:03d}.png"
            )
        order = (
            sorted(range(count), key=lambda i: (i % len(classes), i)) if classes else range(count)
        )
        written[split] = images[list(order)]
    return written
