"""Named preprocessing steps, composed in the order `data.preprocess` lists them.

Each step maps a batch of uint8 (or already scaled) images to the next, the same in numpy on the
host and in jax.numpy inside a compiled step: a step sees jax arrays there and uses jax.numpy.
Scalings multiply by a float32 reciprocal (XLA compiles a division by a constant into that
multiplication) and never leave a multiply-add to fuse, so both give the same bits.

The random steps (crop, flip) of a training batch draw from a counter-based hash of
(seed, step, example): no state, so a resumed run, another batch size or device count, and the
host and the device all draw the same crop for the same example at the same step. Evaluation
batches skip them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax.errors import GenJaxError

Batch = dict[str, np.ndarray]


def _xp(array):
    """numpy for host arrays, jax.numpy inside a compiled step."""
    return jnp if isinstance(array, jax.Array) else np


# ----------------------------------------------------------------------------- scalings
def scale_to_unit(images, data_config: ml_collections.ConfigDict):
    """uint8 pixels to float32 in [0, 1]."""
    del data_config
    return images.astype(np.float32) * np.float32(1 / 255)


def scale_to_symmetric(images, data_config: ml_collections.ConfigDict):
    """uint8 pixels to float32 in [-1, 1] (a tanh generator's range)."""
    del data_config
    centred = images.astype(np.float32) - np.float32(127.5)  # exact: no fused multiply-add
    return centred * np.float32(1 / 127.5)


def _channel_stats(data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    mean, std = (np.asarray(data_config[key], np.float64) for key in ("mean", "std"))
    if not len(mean) or mean.shape != std.shape or np.any(std <= 0):
        raise GenJaxError(
            f"data.preprocess 'normalize' needs data.mean and data.std, one positive std per "
            f"channel, e.g. --config.data.mean=(0.49,0.48,0.45) --config.data.std=(0.25,0.24,"
            f"0.26); got mean {tuple(data_config.mean)}, std {tuple(data_config.std)}. "
            "gen_jax.data.channel_stats(config.data) measures them on the training split."
        )
    return mean, std


def normalize(images, data_config: ml_collections.ConfigDict):
    """uint8 pixels to (x / 255 - mean) / std per channel (data.mean, data.std in [0, 1] units),
    computed as (x - 255 mean) * 1 / (255 std): a subtraction, then a multiplication."""
    mean, std = _channel_stats(data_config)
    if images.shape[-1] % len(mean):
        raise GenJaxError(f"data.mean has {len(mean)} channels; the images have another number")
    by_channel = images.reshape(len(images), -1, len(mean)).astype(np.float32)
    scaled = (by_channel - (255 * mean).astype(np.float32)) * (1 / (255 * std)).astype(np.float32)
    return scaled.reshape(images.shape)


SCALINGS: dict[str, Callable] = {
    "scale_to_unit": scale_to_unit,
    "scale_to_symmetric": scale_to_symmetric,
    "normalize": normalize,
}


def pixel_range(data_config: ml_collections.ConfigDict) -> tuple:
    """The (low, high) pixel values after the preprocessing, set by its last scaling: numbers,
    or per-channel arrays after `normalize`."""
    scalings = [n for n in data_config.preprocess if n in SCALINGS]
    if not scalings:
        raise GenJaxError(
            f"data.preprocess {tuple(data_config.preprocess)} sets no pixel range; end with one "
            f"of {sorted(SCALINGS)}"
        )
    if scalings[-1] == "normalize":
        mean, std = _channel_stats(data_config)
        return (0 - mean) / std, (1 - mean) / std
    return {"scale_to_unit": (0.0, 1.0), "scale_to_symmetric": (-1.0, 1.0)}[scalings[-1]]


# ----------------------------------------------------------------------------- random steps
def _mix(h):
    """murmur3's 32-bit finaliser: every input bit changes about half the output bits."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_bits(seed: int, salt: int, step, index):
    """Uniform uint32 per example, a pure function of (seed, salt, step, example index)."""
    xp = _xp(index)
    h = _mix(xp.full(index.shape, (seed * 0x9E3779B1 + salt) % 2**32, np.uint32))
    h = _mix(h ^ xp.asarray(step).astype(np.uint32))
    return _mix(h ^ index.astype(np.uint32))


CROP_MODES = {"zeros": "constant", "reflect": "reflect"}  # data.crop_mode -> numpy's pad mode


def random_crop(images, batch: Batch, seed: int, data_config: ml_collections.ConfigDict):
    """Each image padded by data.crop_padding pixels a side, with zeros (the CIFAR-10
    augmentation of He et al., 2016) or its own pixels mirrored (`data.crop_mode="reflect"`,
    airbench's), then cropped back to its size at a random offset."""
    xp, pad = _xp(images), data_config.crop_padding
    height, width = images.shape[1:3]
    mode = CROP_MODES[data_config.crop_mode]
    padded = xp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    bits = random_bits(seed, 1, batch["step"], batch["index"])
    offset_y = (bits % (2 * pad + 1)).astype(np.int32)
    offset_x = ((bits >> 16) % (2 * pad + 1)).astype(np.int32)
    rows = offset_y[:, None] + xp.arange(height, dtype=np.int32)
    columns = offset_x[:, None] + xp.arange(width, dtype=np.int32)
    examples = xp.arange(len(images))[:, None, None]
    return padded[examples, rows[:, :, None], columns[:, None, :]]


def horizontal_flip(images, batch: Batch, seed: int, data_config: ml_collections.ConfigDict):
    """Each image mirrored left-right with probability 1/2."""
    del data_config
    flip = (random_bits(seed, 2, batch["step"], batch["index"]) & 1).astype(bool)
    return _xp(images).where(flip[:, None, None, None], images[:, :, ::-1], images)


def alternating_flip(images, batch: Batch, seed: int, data_config: ml_collections.ConfigDict):
    """Each image mirrored in alternate epochs (each row's `epoch`), from a random first choice
    per image (airbench's): any two epochs in a row show every image both ways, where
    independent flips show a quarter of them one way twice."""
    del data_config
    first = random_bits(seed, 3, 0, batch["index"]) & 1
    flip = ((first ^ batch["epoch"].astype(np.uint32)) & 1).astype(bool)
    return _xp(images).where(flip[:, None, None, None], images[:, :, ::-1], images)


RANDOM_STEPS: dict[str, Callable] = {
    "random_crop": random_crop,
    "horizontal_flip": horizontal_flip,
    "alternating_flip": alternating_flip,
}
STEPS = sorted([*SCALINGS, *RANDOM_STEPS])


def check(data_config: ml_collections.ConfigDict) -> None:
    """Refuse unknown step names and crop modes before anything runs."""
    unknown = [n for n in data_config.preprocess if n not in STEPS]
    if unknown:
        raise GenJaxError(f"unknown data.preprocess step(s) {unknown}; available: {STEPS}")
    if data_config.crop_mode not in CROP_MODES:
        raise GenJaxError(
            f"unknown data.crop_mode '{data_config.crop_mode}'; use one of {sorted(CROP_MODES)}"
        )


def preprocessor(
    data_config: ml_collections.ConfigDict,
    *,
    image_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    train: bool = False,
) -> Callable[[Batch], Batch]:
    """The composed `data.preprocess` steps as a function of a batch; `train` adds the random
    steps (keyed by `seed` and the batch's `step` and `index`). Images may come flattened to
    (examples, values) rows (`image_shape` then gives their shape): the scalings keep whatever
    layout they get, the random steps work on images and give back the layout they got.
    Picklable, for grain's worker processes."""
    check(data_config)
    return functools.partial(
        _apply, data_config=data_config, image_shape=image_shape, seed=seed, train=train
    )


def _apply(batch: Batch, data_config, image_shape, seed: int, train: bool) -> Batch:
    images = batch["image"]
    shape = image_shape or images.shape[1:]
    for name in data_config.preprocess:
        if name in SCALINGS:
            images = SCALINGS[name](images, data_config)
        elif train:
            layout = images.shape
            shaped = images.reshape(len(images), *shape)
            images = RANDOM_STEPS[name](shaped, batch, seed, data_config).reshape(layout)
    return {**batch, "image": images}
