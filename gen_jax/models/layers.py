"""Building blocks shared by the models."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

UPSAMPLINGS = ("pixel_shuffle", "transpose")
DOWNSAMPLINGS = ("strided", "space_to_depth")


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """Rearrange (B, H, W, block*block*C) to (B, block*H, block*W, C) ("pixel shuffle")."""
    batch, height, width, channels = x.shape
    features = channels // (block * block)
    x = x.reshape(batch, height, width, block, block, features).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height * block, width * block, features)


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
    """Rearrange (B, block*H, block*W, C) to (B, H, W, block*block*C): `depth_to_space` undone."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // block, block, width // block, block, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height // block, width // block, block * block * channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: int) -> jax.Array:
    """`nn.max_pool(x, (window, window), strides=(window, window))` of (B, H, W, C), rows and
    columns that fill no window dropped, with the same gradient bit for bit (to the first
    maximum of each window, row by row), computed by comparisons instead of XLA's
    select-and-scatter, which XLA's CPU backend runs ~10x slower (benchmarks/README.md)."""
    return nn.max_pool(x, (window, window), strides=(window, window))


def _max_pool_forward(x: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
    return max_pool(x, window), x


def _max_pool_backward(window: int, x: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
    batch, height, width, channels = x.shape
    rows, columns = height // window, width // window
    blocks = x[:, : rows * window, : columns * window]
    blocks = blocks.reshape(batch, rows, window, columns, window, channels)
    # the maxima of these very values: XLA may recompute x rather than keep it, and a maximum
    # kept from the forward pass could then differ from every entry of its window in the last bit
    pooled = blocks.max(axis=(2, 4))
    taken = jnp.zeros(pooled.shape, bool)  # whether a window's maximum was met already
    grad_rows = []
    for i in range(window):
        grad_row = []
        for j in range(window):
            first = (blocks[:, :, i, :, j] == pooled) & ~taken
            taken = taken | first
            grad_row.append(jnp.where(first, grad, 0))
        grad_rows.append(jnp.stack(grad_row, axis=3))
    grads = jnp.stack(grad_rows, axis=2).reshape(batch, rows * window, columns * window, channels)
    dropped = ((0, 0), (0, height - rows * window), (0, width - columns * window), (0, 0))
    return (jnp.pad(grads, dropped),)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


class Upsample(nn.Module):
    """2x spatial upsampling to `features` channels.

    "pixel_shuffle": a 3x3 convolution to 4x the features, then `depth_to_space`;
    "transpose": a stride-2 transposed convolution (the DCGAN paper's layer). XLA's CPU backend
    runs the transposed convolution ~5x slower for the same shapes (benchmarks/upsampling.py).
    """

    features: int
    mode: str = "pixel_shuffle"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "pixel_shuffle":
            return depth_to_space(nn.Conv(4 * self.features, (3, 3), use_bias=self.use_bias)(x))
        if self.mode == "transpose":
            return nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), use_bias=self.use_bias)(
                x
            )
        raise ValueError(f"unknown upsampling '{self.mode}'; use one of {UPSAMPLINGS}")


def downsample(x: jax.Array, features: int, mode: str, use_bias: bool = True) -> jax.Array:
    """2x spatial downsampling to `features` channels through a 4x4 receptive field; call it
    inside a compact module (its convolution is that module's, named as if written there).

    "strided": a stride-2 4x4 convolution (the DCGAN paper's layer); "space_to_depth": blocks of
    2x2 pixels as channels, then a 2x2 convolution: the same function class with the window one
    pixel later (tests/test_models.py), built only of stride-1 convolutions. An input gradient
    through a stride-2 convolution is a transposed convolution, which XLA's CPU backend runs
    slowly, and an R1 or gradient penalty differentiates it once more: "space_to_depth" makes such
    a discriminator step ~1.75x faster (benchmarks/README.md). Needs even input sizes.
    """
    if mode == "strided":
        return nn.Conv(features, (4, 4), strides=(2, 2), use_bias=use_bias)(x)
    if mode == "space_to_depth":
        return nn.Conv(features, (2, 2), use_bias=use_bias)(space_to_depth(x))
    raise ValueError(f"unknown downsampling '{mode}'; use one of {DOWNSAMPLINGS}")
