"""Samplers of the diffusion family, each one compiled loop (`lax.fori_loop`) from noise at t = 1
to images at t = 0 over `steps` equal time steps.

Each takes `denoise(x, t) -> (x_0 estimate, noise estimate)` at x_t for a scalar t (the network,
with guidance and clipping already applied, `diffusion.DiffusionTask.denoiser`) and a
`GaussianPath`:

- "ddim" (Song et al., 2021): x_t' = a' x_0 + sqrt(s'^2 - sigma^2) noise + sigma z, with sigma =
  eta times the posterior's standard deviation; eta = 0 is deterministic.
- "ddpm": ancestral sampling, which is DDIM with eta = 1 (Song et al., Eq. 16; the posterior of
  Ho et al.'s Eq. 7 on any time grid).
- "euler" and "heun": the probability-flow ODE dx/dt = a'(t) x_0 + s'(t) noise, which for flow
  matching is the learned velocity; Heun's last step, to t = 0, is an Euler step (Karras et al.,
  2022), so it makes 2 steps - 1 network evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gen_jax.errors import GenJaxError
from gen_jax.tasks.gaussian_paths import GaussianPath

SAMPLERS = ("ddim", "ddpm", "euler", "heun")
Denoiser = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations (NFE) of one sample: what a sampler's cost is quoted in."""
    return 2 * steps - 1 if sampler == "heun" else steps


def steps_for(sampler: str, nfe: int) -> int:
    """The steps of at most `nfe` network evaluations (Heun's 2 steps - 1: an even NFE rounds
    down), the inverse of `evaluations`."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def check(sampler: str, steps: int, eta: float) -> None:
    """Refuse a sampler setting before anything is compiled."""
    if sampler not in SAMPLERS:
        raise GenJaxError(f"unknown sampler '{sampler}'; use one of {SAMPLERS}")
    if steps < 1:
        raise GenJaxError(f"a sampler needs at least 1 step, not {steps}")
    if eta < 0:
        raise GenJaxError(f"task.eta {eta} must be >= 0 (0: deterministic DDIM)")


def time_grid(steps: int, start: float = 1.0, end: float = 0.0) -> jax.Array:
    """steps + 1 equally spaced times from `start` to `end`."""
    return jnp.linspace(start, end, steps + 1)


def _coefficients_to(path: GaussianPath, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a, s) at t, exactly (1, 0) at t = 0: the last step lands on the x_0 estimate."""
    a, s = path.coefficients(t)
    return jnp.where(t > 0, a, 1.0), jnp.where(t > 0, s, 0.0)


def _run(step: Callable, steps: int, x: jax.Array, record: bool):
    """`steps` applications of `step(i, x)` in one loop; with `record`, also every x_t visited,
    (steps + 1, *x.shape), noise first."""
    if not record:
        return jax.lax.fori_loop(0, steps, step, x)

    def recorded(i, carry):
        x, visited = carry
        x = step(i, x)
        return x, visited.at[i + 1].set(x)

    visited = jnp.zeros((steps + 1, *x.shape), x.dtype).at[0].set(x)
    return jax.lax.fori_loop(0, steps, recorded, (x, visited))


def ddim_step(denoise: Denoiser, path: GaussianPath, grid: jax.Array, eta: float, rng):
    """One DDIM step i, from grid[i] to grid[i + 1]; `rng` draws the fresh noise when eta > 0."""

    def step(i, x):
        t, t_next = grid[i], grid[i + 1]
        x0, eps = denoise(x, t)
        a_next, s_next = _coefficients_to(path, t_next)
        if eta == 0:
            return a_next * x0 + s_next * eps
        # the posterior q(x_t' | x_t, x_0) has variance s'^2 (1 - SNR(t) / SNR(t'))
        ratio = jnp.exp(path.log_snr(t) - path.log_snr(t_next))
        sigma = eta * s_next * jnp.sqrt(jnp.clip(1.0 - ratio, 0.0, 1.0))
        fresh = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
        return a_next * x0 + jnp.sqrt(s_next**2 - sigma**2) * eps + sigma * fresh

    return step


def ddim_invert(denoise: Denoiser, path: GaussianPath, images: jax.Array, steps: int) -> jax.Array:
    """Deterministic DDIM run backwards, images (t = 0) to their noise (t = 1): decoding the
    result with DDIM at eta = 0 gives the images back, up to the discretisation."""
    grid = time_grid(steps, 0.0, 1.0)

    def step(i, x):
        x0, eps = denoise(x, grid[i])
        a_next, s_next = path.coefficients(grid[i + 1])
        return a_next * x0 + s_next * eps

    return _run(step, steps, images, record=False)


def _drift(denoise: Denoiser, path: GaussianPath, x: jax.Array, t: jax.Array) -> jax.Array:
    x0, eps = denoise(x, t)
    return path.velocity(x0, eps, jnp.full((x.shape[0],), t))


def ode_step(denoise: Denoiser, path: GaussianPath, grid: jax.Array, second_order: bool):
    """One Euler (or Heun) step i of the probability-flow ODE; Heun's last one is Euler's."""
    last = grid.shape[0] - 2

    def euler(i, x):
        return x + (grid[i + 1] - grid[i]) * _drift(denoise, path, x, grid[i])

    def heun(i, x):
        t, t_next = grid[i], grid[i + 1]
        drift = _drift(denoise, path, x, t)
        guess = x + (t_next - t) * drift
        return x + (t_next - t) * 0.5 * (drift + _drift(denoise, path, guess, t_next))

    if not second_order:
        return euler
    return lambda i, x: jax.lax.cond(i < last, heun, euler, i, x)


def sample(
    sampler: str,
    denoise: Denoiser,
    path: GaussianPath,
    noise: jax.Array,
    steps: int,
    eta: float = 0.0,
    rng: jax.Array | None = None,
    record: bool = False,
):
    """Images from `noise` (x_1) by the named sampler ("ddpm" is DDIM at eta = 1; `rng` draws
    their fresh noise); with `record`, also every x_t on the way (see `_run`)."""
    grid = time_grid(steps)
    if sampler in ("ddim", "ddpm"):
        step = ddim_step(denoise, path, grid, 1.0 if sampler == "ddpm" else eta, rng)
    else:
        step = ode_step(denoise, path, grid, second_order=sampler == "heun")
    return _run(step, steps, noise, record)
