"""Walking a latent space: interpolate, traverse, project to 2-D, manifold grids.

Plain functions of latent arrays. Encoding and decoding belong to a loaded run
(`run = gen_jax.load_run(workdir)`: `run.encode`, `run.decode`), which works for a VAE's latents
and a GAN's noise alike; `scatter_figure` and `gen_jax.images.grid` turn the results into pictures.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri


def interpolate(
    start: np.ndarray, end: np.ndarray, steps: int, spherical: bool = False
) -> np.ndarray:
    """`steps` latents from `start` to `end` (both included): along the line, or along the great
    circle with the norm interpolated linearly (spherical; keeps samples in the prior's shell)."""
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    start, end = jnp.asarray(start), jnp.asarray(end)
    if not spherical:
        return np.asarray((1 - t) * start + t * end)
    start_norm, end_norm = jnp.linalg.norm(start), jnp.linalg.norm(end)
    cosine = jnp.clip(jnp.dot(start / start_norm, end / end_norm), -1.0, 1.0)
    angle = jnp.arccos(cosine)
    sin = jnp.maximum(jnp.sin(angle), 1e-7)
    direction = (
        jnp.sin((1 - t) * angle) * start / start_norm + jnp.sin(t * angle) * end / end_norm
    ) / sin
    direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
    return np.asarray(direction * ((1 - t) * start_norm + t * end_norm))


def traverse(latent: np.ndarray, dimension: int, values: np.ndarray) -> np.ndarray:
    """Copies of `latent` with one dimension set to each of `values`: (len(values), D)."""
    latents = np.repeat(np.asarray(latent)[None], len(values), axis=0)
    latents[:, dimension] = values
    return latents


def project_2d(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of latents (N, D): the latents themselves when D == 2, else their first two
    principal components. Also returns the fraction of variance each axis explains."""
    latents = np.asarray(latents, np.float64)
    centred = latents - latents.mean(0)
    total = centred.var(0).sum()
    if latents.shape[1] == 2:
        return latents, centred.var(0) / total
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = singular[:2] ** 2 / len(latents) / total
    return centred @ vt[:2].T, explained


def manifold_latents(points_per_side: int = 20, margin: float = 0.05) -> np.ndarray:
    """A (n, n, 2) grid of 2-D latents at evenly spaced quantiles of the N(0, I) prior (the
    decoded grid shows the whole learned manifold, as in Kingma & Welling)."""
    quantiles = ndtri(jnp.linspace(margin, 1 - margin, points_per_side))
    ys, xs = jnp.meshgrid(quantiles[::-1], quantiles, indexing="ij")
    return np.asarray(jnp.stack([xs, ys], axis=-1))


def manifold_grid(decode: Callable, points_per_side: int = 20) -> np.ndarray:
    """`decode` (e.g. `run.decode`) of `manifold_latents`, laid out (n, n, H, W, C) for
    `images.grid`."""
    latents = manifold_latents(points_per_side)
    decoded = np.asarray(decode(latents.reshape(-1, 2)))
    return decoded.reshape(points_per_side, points_per_side, *decoded.shape[1:])


def scatter_figure(points: np.ndarray, labels: np.ndarray, title: str = ""):
    """A matplotlib figure of 2-D points coloured by integer label, with a legend."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 6))
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=2, alpha=0.7)
    axes.legend(*scatter.legend_elements(), title="label", loc="best", fontsize="small")
    axes.set_title(title)
    axes.set_aspect("equal", adjustable="datalim")
    figure.tight_layout()
    return figure
