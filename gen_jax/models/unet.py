"""The U-Net of the diffusion family: noisy images and their times in, one image-shaped output
(noise, velocity or v, as the task reads it) out.

Residual blocks with group norm and the time embedding added in between (Ho et al., 2020), one
level per entry of `channel_multipliers`, each halving the size after its blocks; optional
self-attention at the lowest resolution; optional class conditioning, with one extra "no label"
class that classifier-free guidance uses. Down- and upsampling are the stride-1 layers of
`layers` (space_to_depth, pixel shuffle): XLA's CPU backend runs strided and transposed
convolutions slowly.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.errors import GenJaxError
from gen_jax.models.layers import Upsample, downsample

TIME_SCALE = 1000.0  # times in [0, 1] are embedded as DDPM's step numbers 0..1000


def time_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal features (B, dim) of times t (B,) in [0, 1] (the Transformer's positions)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    angles = TIME_SCALE * t[:, None] * frequencies[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the embedding's projection, GroupNorm-SiLU-conv, residual."""

    features: int
    groups: int
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.silu(nn.GroupNorm(self.groups)(x)))
        h = h + nn.Dense(self.features, dtype=self.dtype)(nn.silu(embedding))[:, None, None]
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype)(x)
        return x + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, residual."""

    heads: int
    groups: int
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, features = x.shape
        tokens = nn.GroupNorm(self.groups)(x).reshape(batch, height * width, features)
        attended = nn.MultiHeadDotProductAttention(
            self.heads, dtype=self.dtype, out_kernel_init=nn.initializers.zeros
        )(tokens)
        return x + attended.reshape(x.shape)


class UNet(nn.Module):
    """(images (B, H, W, C), times (B,) in [0, 1][, labels (B,)]) -> (B, H, W, C).

    Label `num_classes` means "no label" (the unconditional model of classifier-free guidance).
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    features: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 2
    attention: bool = False  # self-attention at the lowest resolution
    heads: int = 4
    groups: int = 8
    num_classes: int = 0  # > 0: class-conditional
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        embedding = time_embedding(t, self.features)
        width = 4 * self.features
        embedding = nn.Dense(width)(nn.silu(nn.Dense(width)(embedding)))
        if self.num_classes:
            embedding = embedding + nn.Embed(self.num_classes + 1, width)(labels)
        block = lambda features: ResBlock(features, self.groups, self.dtype)
        levels = [self.features * m for m in self.channel_multipliers]

        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for index, features in enumerate(levels):
            for _ in range(self.blocks_per_level):
                h = block(features)(h, embedding)
                skips.append(h)
            if index < len(levels) - 1:
                h = downsample(h, features, "space_to_depth")
                skips.append(h)
        h = block(levels[-1])(h, embedding)
        if self.attention:
            h = SelfAttention(self.heads, self.groups, self.dtype)(h)
        h = block(levels[-1])(h, embedding)
        for index, features in reversed(list(enumerate(levels))):
            for _ in range(self.blocks_per_level + 1):
                h = block(features)(jnp.concatenate([h, skips.pop()], axis=-1), embedding)
            if index > 0:
                h = Upsample(features)(h)
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        return out.astype(jnp.float32)


def unet(
    image_shape: tuple[int, int, int] = (28, 28, 1),
    features: int = 32,
    channel_multipliers: tuple[int, ...] = (1, 2, 2),
    blocks_per_level: int = 2,
    attention: bool = False,
    heads: int = 4,
    groups: int = 8,
    num_classes: int = 0,
    dtype: str = "float32",
) -> UNet:
    """A U-Net for images of `image_shape`, refused at build time for sizes it cannot halve."""
    height, width, _ = image_shape
    halvings = len(channel_multipliers) - 1
    if height % 2**halvings or width % 2**halvings:
        raise GenJaxError(
            f"the U-Net halves the image {halvings} time(s) (one per model.channel_multipliers "
            f"entry after the first), so height and width must be divisible by {2**halvings}; "
            f"the data are {height}x{width}: change model.channel_multipliers or data.image_size"
        )
    widths = [features * m for m in channel_multipliers]
    if any(w % groups for w in (features, *widths)):
        raise GenJaxError(
            f"model.groups {groups} must divide every level's features {widths} (group norm)"
        )
    return UNet(
        tuple(image_shape),
        features,
        tuple(channel_multipliers),
        blocks_per_level,
        attention,
        heads,
        groups,
        num_classes,
        dtype,
    )
