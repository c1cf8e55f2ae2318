"""The GAN objectives: each player's loss on the discriminator's scores, and the two penalties on
the discriminator's input gradient (WGAN-GP's at interpolated points, R1's at the real images)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gen_jax.errors import GenJaxError

LOSSES = ("non_saturating", "hinge", "wasserstein")


def discriminator_loss(kind: str, real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
    """The discriminator's (critic's) loss, a mean over the batch, without any penalty."""
    if kind == "non_saturating":  # binary cross-entropy: real -> 1, fake -> 0
        return jnp.mean(jax.nn.softplus(-real_scores) + jax.nn.softplus(fake_scores))
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_scores) + jax.nn.relu(1.0 + fake_scores))
    if kind == "wasserstein":
        return jnp.mean(fake_scores - real_scores)
    raise GenJaxError(f"unknown task.loss '{kind}'; use one of {LOSSES}")


def generator_loss(kind: str, fake_scores: jax.Array) -> jax.Array:
    """The generator's loss on the discriminator's scores of its images, a mean over the batch."""
    if kind == "non_saturating":  # -log D(G(z)) rather than log(1 - D(G(z)))
        return jnp.mean(jax.nn.softplus(-fake_scores))
    if kind in ("hinge", "wasserstein"):
        return -jnp.mean(fake_scores)
    raise GenJaxError(f"unknown task.loss '{kind}'; use one of {LOSSES}")


def squared_input_gradient_norms(
    critic: Callable[[jax.Array], jax.Array], images: jax.Array
) -> jax.Array:
    """|grad_x critic(x)|^2 for each example (B,): what both penalties are made of. Summing the
    scores before differentiating is exact only for a critic that keeps examples apart."""
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(images)
    return jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1)


def gradient_penalty(
    critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array, rng: jax.Array
) -> jax.Array:
    """Gulrajani et al. (2017): mean of (|grad_x critic(x)| - 1)^2 at a random point between each
    real and fake example (per-example gradients: the critic must not couple examples)."""
    mix = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
    points = mix * real + (1.0 - mix) * fake
    norms = jnp.sqrt(squared_input_gradient_norms(critic, points) + 1e-12)
    return jnp.mean(jnp.square(norms - 1.0))


def r1_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
    """Mescheder et al. (2018): mean of |grad_x critic(x)|^2 at the real examples, which pulls
    the discriminator flat on the data and lets the non-saturating game converge."""
    return jnp.mean(squared_input_gradient_norms(critic, real))
