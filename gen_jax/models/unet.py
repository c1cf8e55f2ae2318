"""The U-Net of the diffusion family: noisy images and their times in, one image-shaped output
(noise, velocity or v, as the task reads it) out.

Residual blocks with group norm and the time embedding added in between (Ho et al., 2020), one
level per entry of `channel_multipliers`, each halving the size after its blocks; optional
self-attention in the middle (`attention`) and after every block at the sizes
`attention_resolutions`; dropout in the blocks; optional class conditioning, with one extra
"no label" class that classifier-free guidance uses.

Resampling: "space_to_depth" (the default) uses the stride-1 layers of `layers` (space_to_depth,
pixel shuffle), since XLA's CPU backend runs strided and transposed convolutions slowly; "conv"
is DDPM's released code (`resamp_with_conv`): a stride-2 3x3 convolution down, nearest-neighbour
doubling and a 3x3 convolution up. With those, 128 features, multipliers (1, 2, 2, 2), 2 blocks,
attention at 16 pixels and in the middle, this is DDPM's CIFAR-10 network (35.7M parameters).

`remat` rematerialises each residual and attention block (`nn.remat`, policy
`nothing_saveable`): the backward pass recomputes a block's activations from its input instead
of keeping them, so a step keeps only the blocks' inputs, for ~1/3 more compute.
"""

from __future__ import annotations

import collections
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


def conditioning(
    t: jax.Array,
    labels: jax.Array | None,
    frequencies: int,
    width: int,
    num_classes: int,
    kernel_init=nn.linear.default_kernel_init,
    embedding_init=nn.linear.default_embed_init,
) -> jax.Array:
    """What a denoiser's blocks are conditioned on (B, width): the times' `frequencies`
    sinusoidal features through a two-layer SiLU MLP, plus a learned row per label for a
    conditional model (row `num_classes`: "no label"). Called inside a compact module, whose
    layers they are: Dense_0 is the MLP's second layer, Dense_1 its first (the order the U-Net
    always made them in, so that its saved runs restore)."""
    second, first = (
        nn.Dense(width, kernel_init=kernel_init),
        nn.Dense(width, kernel_init=kernel_init),
    )
    embedding = second(nn.silu(first(time_embedding(t, frequencies))))
    if num_classes:
        embedding = embedding + nn.Embed(num_classes + 1, width, embedding_init=embedding_init)(
            labels
        )
    return embedding


RESAMPLINGS = ("space_to_depth", "conv")


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the embedding's projection, GroupNorm-SiLU-dropout-conv,
    residual."""

    features: int
    groups: int
    dtype: str
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array, train: bool = False) -> jax.Array:
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.silu(nn.GroupNorm(self.groups)(x)))
        h = h + nn.Dense(self.features, dtype=self.dtype)(nn.silu(embedding))[:, None, None]
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(h)
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
    """(images (B, H, W, C), times (B,) in [0, 1][, labels (B,)]) -> (B, H, W, C); `train`
    turns dropout on (it then needs a "dropout" key).

    Label `num_classes` means "no label" (the unconditional model of classifier-free guidance).
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    features: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 2
    attention: bool = False  # self-attention in the middle, at the lowest resolution
    attention_resolutions: tuple[int, ...] = ()  # and after each block at these heights
    heads: int = 4
    groups: int = 8
    dropout: float = 0.0
    resample: str = "space_to_depth"
    num_classes: int = 0  # > 0: class-conditional
    remat: bool = False
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        embedding = conditioning(t, labels, self.features, 4 * self.features, self.num_classes)
        made = collections.Counter()  # blocks named as Linen names them unwrapped, so that
        # a checkpoint restores with remat on or off

        def residual(h: jax.Array, features: int) -> jax.Array:
            name, made["ResBlock"] = f"ResBlock_{made['ResBlock']}", made["ResBlock"] + 1
            module = maybe_remat(ResBlock, self.remat, static_argnums=(3,))
            return module(features, self.groups, self.dtype, self.dropout, name=name)(
                h, embedding, train
            )

        def attention(h: jax.Array) -> jax.Array:
            name = f"SelfAttention_{made['SelfAttention']}"
            made["SelfAttention"] += 1
            module = maybe_remat(SelfAttention, self.remat)
            return module(self.heads, self.groups, self.dtype, name=name)(h)

        def block(h: jax.Array, features: int) -> jax.Array:
            h = residual(h, features)
            return attention(h) if h.shape[1] in self.attention_resolutions else h

        levels = [self.features * m for m in self.channel_multipliers]
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for index, features in enumerate(levels):
            for _ in range(self.blocks_per_level):
                h = block(h, features)
                skips.append(h)
            if index < len(levels) - 1:
                h = self._down(h, features)
                skips.append(h)
        h = residual(h, levels[-1])
        if self.attention:
            h = attention(h)
        h = residual(h, levels[-1])
        for index, features in reversed(list(enumerate(levels))):
            for _ in range(self.blocks_per_level + 1):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), features)
            if index > 0:
                h = self._up(h, features)
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        return out.astype(jnp.float32)

    def _down(self, h: jax.Array, features: int) -> jax.Array:
        if self.resample == "conv":
            return nn.Conv(features, (3, 3), strides=(2, 2), dtype=self.dtype)(h)
        return downsample(h, features, "space_to_depth")

    def _up(self, h: jax.Array, features: int) -> jax.Array:
        if self.resample == "conv":
            batch, height, width, channels = h.shape
            h = jax.image.resize(h, (batch, 2 * height, 2 * width, channels), "nearest")
            return nn.Conv(features, (3, 3), dtype=self.dtype)(h)
        return Upsample(features)(h)


def maybe_remat(module: type[nn.Module], remat: bool, **options) -> type[nn.Module]:
    """`module`, rematerialised where `remat`: its activations recomputed in the backward pass
    from its inputs (policy `nothing_saveable`: none kept)."""
    if not remat:
        return module
    return nn.remat(module, policy=jax.checkpoint_policies.nothing_saveable, **options)


def unet(
    image_shape: tuple[int, int, int] = (28, 28, 1),
    features: int = 32,
    channel_multipliers: tuple[int, ...] = (1, 2, 2),
    blocks_per_level: int = 2,
    attention: bool = False,
    attention_resolutions: tuple[int, ...] = (),
    heads: int = 4,
    groups: int = 8,
    dropout: float = 0.0,
    resample: str = "space_to_depth",
    num_classes: int = 0,
    remat: bool = False,
    dtype: str = "float32",
) -> UNet:
    """A U-Net for images of `image_shape`, refused at build time for sizes it cannot halve and
    for options it does not know."""
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
    if resample not in RESAMPLINGS:
        raise GenJaxError(f"model.resample '{resample}' is not one of {RESAMPLINGS}")
    sizes = {height // 2**level for level in range(halvings + 1)}
    if set(attention_resolutions) - sizes:
        raise GenJaxError(
            f"model.attention_resolutions {tuple(attention_resolutions)}: the U-Net's feature "
            f"maps are {sorted(sizes, reverse=True)} pixels high; choose among those"
        )
    if not 0 <= dropout < 1:
        raise GenJaxError(f"model.dropout {dropout} must be in [0, 1)")
    return UNet(
        image_shape=tuple(image_shape),
        features=features,
        channel_multipliers=tuple(channel_multipliers),
        blocks_per_level=blocks_per_level,
        attention=attention,
        attention_resolutions=tuple(attention_resolutions),
        heads=heads,
        groups=groups,
        dropout=dropout,
        resample=resample,
        num_classes=num_classes,
        remat=remat,
        dtype=dtype,
    )
