"""Latent-space tools on a small untrained VAE (the tools do not care whether it learned)."""

import jax
import numpy as np
import pytest

from gen_jax import latent
from gen_jax.tasks.base import init_state
from tests.helpers.vae import tiny_task


@pytest.fixture(scope="module")
def decode():
    """A small untrained VAE's decoder: latents (N, 2) -> pixel probabilities."""
    task = tiny_task()
    state = init_state(task, jax.random.PRNGKey(0), {"image": np.zeros((1, 28, 28, 1), np.float32)})
    return jax.jit(lambda z: jax.nn.sigmoid(task.decode(state.params, z)))


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_endpoints_decode_to_the_endpoints(decode, spherical):
    start, end = np.array([1.0, -2.0]), np.array([-0.5, 3.0])
    path = latent.interpolate(start, end, 7, spherical=spherical)
    assert path.shape == (7, 2)
    decoded = decode(path)
    # probabilities in [0, 1] from the same decoder at the same latent, one computed in a batch
    # of 7 and one alone: a few ulps (~1e-7); an endpoint off by one step of 7 moves them ~1e-2
    np.testing.assert_allclose(decoded[0], decode(start[None])[0], atol=1e-5)
    np.testing.assert_allclose(decoded[-1], decode(end[None])[0], atol=1e-5)


def test_spherical_interpolation_moves_the_norm_linearly_along_the_arc():
    start, end = np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    path = latent.interpolate(start, end, 5, spherical=True)
    # float32 trigonometry on norms 1-3: ~1e-7 relative, ~1e-5 degrees; a linear path's middle
    # has norm 1.58 instead of 2, a wrong angle is off by degrees
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linspace(3, 1, 5), rtol=1e-5)
    directions = path / np.linalg.norm(path, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(directions @ np.array([1.0, 0.0, 0.0])))
    np.testing.assert_allclose(angles, np.linspace(0, 90, 5), atol=1e-3)
    linear = latent.interpolate(start, end, 5)
    assert np.linalg.norm(linear[2]) < np.linalg.norm(path[2])


def test_traversal_changes_only_one_dimension():
    latents = latent.traverse(np.array([0.5, 1.0, 2.0]), 1, np.linspace(-3, 3, 4))
    np.testing.assert_array_equal(latents[:, 1], np.linspace(-3, 3, 4))
    assert (latents[:, [0, 2]] == [0.5, 2.0]).all()


def test_projection_keeps_2d_latents_and_finds_the_principal_axes():
    points = np.random.default_rng(0).normal(size=(500, 2))
    np.testing.assert_array_equal(latent.project_2d(points)[0], points)
    rng = np.random.default_rng(1)
    wide = np.zeros((1000, 5))
    wide[:, 3] = 10 * rng.normal(size=1000)
    wide[:, 1] = rng.normal(size=1000)
    projected, explained = latent.project_2d(wide)
    assert projected.shape == (1000, 2)
    assert abs(np.corrcoef(projected[:, 0], wide[:, 3])[0, 1]) > 0.999
    assert explained[0] > 0.98


def test_manifold_grid_covers_the_prior_quantiles_symmetrically(decode):
    latents = latent.manifold_latents(5)
    assert latents.shape == (5, 5, 2)
    # normal quantiles at 1/2 and at p, 1 - p: 0 and mirror images to float rounding (~1e-16);
    # an off-centre grid (e.g. quantiles of i / n) is off by > 0.1
    np.testing.assert_allclose(latents[2, 2], 0, atol=1e-6)
    np.testing.assert_allclose(latents[0, 0], -latents[-1, -1], atol=1e-6)
    assert latent.manifold_grid(decode, 5).shape == (5, 5, 28, 28, 1)


def test_scatter_figure_draws_every_point(tmp_path):
    figure = latent.scatter_figure(np.zeros((30, 2)), np.arange(30) % 10, "map")
    assert len(figure.axes[0].collections[0].get_offsets()) == 30
    figure.savefig(tmp_path / "map.png")
