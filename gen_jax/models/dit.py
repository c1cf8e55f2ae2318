"""The Diffusion Transformer (DiT; Peebles & Xie, "Scalable Diffusion Models with Transformers",
2023), a transformer backbone for the diffusion family in place of the U-Net: the same call,
(noisy images, times in [0, 1][, labels]) -> an image-shaped output.

Images are cut into `patch_size` squares, each a token (a linear map of its pixels) with a fixed
2-D sine-cosine position; `depth` blocks of self-attention and an MLP, each conditioned on the
time (and label) embedding by adaLN-Zero: a LayerNorm without its own scale and shift, then a
shift, scale and gate per block regressed from the embedding, initialised to zero so that every
block starts as the identity. A final adaLN layer maps the tokens back to patches. The outputs
are one image (no learned variance: flow matching and epsilon or v prediction need none).

DiT-S/2 is hidden 384, depth 12, 6 heads, patches of 2 (33M parameters at 256 px in the paper,
whose model also outputs a learned variance and embeds 1,000 classes). Initialised as the
paper's code: Xavier-uniform linear layers, the label table and the time MLP from N(0, 0.02^2),
the modulations and the output layer at zero. The sinusoids' order (sin first; rows before
columns) differs from its code: a fixed permutation of features that a linear layer reads.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.errors import GenJaxError
from gen_jax.models.layers import depth_to_space, space_to_depth
from gen_jax.models.unet import conditioning, maybe_remat

FREQUENCIES = 256  # dimensions of the sinusoidal time features (DiT's TimestepEmbedder)
XAVIER, SMALL = nn.initializers.xavier_uniform(), nn.initializers.normal(0.02)


def positions_2d(height: int, width: int, features: int) -> np.ndarray:
    """Fixed sine-cosine positions (height * width, features): half the features encode the row,
    half the column (MAE's and DiT's `get_2d_sincos_pos_embed`)."""
    quarter = features // 4
    frequencies = 1.0 / 10_000 ** (np.arange(quarter) / quarter)

    def encode(coordinates: np.ndarray) -> np.ndarray:
        angles = coordinates[:, None] * frequencies[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    encoded = [encode(rows.reshape(-1).astype(np.float64)), encode(columns.reshape(-1) * 1.0)]
    return np.concatenate(encoded, axis=1).astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: normalised tokens (B, N, D) shifted and scaled per example (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def plain_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without a learned scale or shift (adaLN supplies them)."""
    return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False)(x)


class DiTBlock(nn.Module):
    """Self-attention and an MLP (4x wide, tanh-GELU), each behind an adaLN-Zero modulation."""

    features: int
    heads: int
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
        zeros = nn.initializers.zeros
        modulation = nn.Dense(6 * self.features, kernel_init=zeros)(nn.silu(condition))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation, 6, axis=-1)
        attention = nn.MultiHeadDotProductAttention(
            self.heads, dtype=self.dtype, kernel_init=XAVIER, out_kernel_init=XAVIER
        )
        x = x + gate1[:, None] * attention(modulate(plain_norm(x), shift1, scale1))
        h = modulate(plain_norm(x), shift2, scale2)
        dense = lambda features: nn.Dense(features, dtype=self.dtype, kernel_init=XAVIER)
        h = nn.gelu(dense(4 * self.features)(h), approximate=True)
        h = dense(self.features)(h)
        return x + gate2[:, None] * h


class DiT(nn.Module):
    """(images (B, H, W, C), times (B,) in [0, 1][, labels (B,)]) -> (B, H, W, C).

    Label `num_classes` means "no label" (classifier-free guidance), as in the U-Net.
    """

    image_shape: tuple[int, int, int] = (32, 32, 3)
    patch_size: int = 2
    features: int = 384
    depth: int = 12
    heads: int = 6
    num_classes: int = 0
    remat: bool = False
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        del train  # no dropout: the same network in training and sampling
        patch, channels = self.patch_size, self.image_shape[-1]
        patches = space_to_depth(x.astype(self.dtype), patch)  # (B, H/p, W/p, p*p*C)
        batch, rows, columns, _ = patches.shape
        patches = patches.reshape(batch, rows * columns, -1)
        tokens = nn.Dense(self.features, dtype=self.dtype, kernel_init=XAVIER)(patches)
        tokens = tokens + positions_2d(rows, columns, self.features)[None]
        condition = conditioning(
            t,
            labels,
            FREQUENCIES,
            self.features,
            self.num_classes,
            kernel_init=SMALL,
            embedding_init=SMALL,
        )
        block = maybe_remat(DiTBlock, self.remat)
        for index in range(self.depth):
            tokens = block(self.features, self.heads, self.dtype, name=f"DiTBlock_{index}")(
                tokens, condition
            )
        zeros = nn.initializers.zeros
        shift, scale = jnp.split(
            nn.Dense(2 * self.features, kernel_init=zeros)(nn.silu(condition)), 2, axis=-1
        )
        tokens = modulate(plain_norm(tokens), shift, scale)
        patches = nn.Dense(patch * patch * channels, kernel_init=zeros)(tokens)
        out = depth_to_space(patches.reshape(batch, rows, columns, -1), patch)
        return out.astype(jnp.float32)


def dit(
    image_shape: tuple[int, int, int] = (32, 32, 3),
    patch_size: int = 2,
    features: int = 384,
    depth: int = 12,
    heads: int = 6,
    num_classes: int = 0,
    remat: bool = False,
    dtype: str = "float32",
) -> DiT:
    """A DiT for images of `image_shape` (defaults: DiT-S/2), refused at build time where the
    patches do not tile the image or the heads do not divide the features."""
    height, width, _ = image_shape
    if height % patch_size or width % patch_size:
        raise GenJaxError(
            f"model.patch_size {patch_size} must divide the image's height and width "
            f"({height}x{width})"
        )
    if features % heads or features % 4:
        raise GenJaxError(
            f"model.features {features} must be a multiple of model.heads ({heads}) and of 4 "
            "(the 2-D sine-cosine positions)"
        )
    return DiT(tuple(image_shape), patch_size, features, depth, heads, num_classes, remat, dtype)
