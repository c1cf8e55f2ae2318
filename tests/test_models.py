"""Model shapes and sizes."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from gen_jax import models
from gen_jax.errors import GenJaxError


def count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def test_baseline_cnn_matches_the_flax_example_size_and_shapes():
    model = models.build(ml_collections.ConfigDict({"name": "cnn"}))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
    assert count(variables["params"]) == 824_458
    assert model.apply(variables, jnp.zeros((5, 28, 28, 1))).shape == (5, 10)


def test_batch_norm_cnn_has_running_statistics_and_trains_with_dropout():
    model = models.build(ml_collections.ConfigDict({"name": "bn_cnn"}))
    x = jnp.ones((4, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert set(variables) == {"params", "batch_stats"}
    logits, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"]
    )
    assert logits.shape == (4, 10)
    assert not jnp.allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], 0)


def test_unknown_model_or_option_is_a_clear_error():
    with pytest.raises(GenJaxError, match="unknown model 'resnet'"):
        models.build(ml_collections.ConfigDict({"name": "resnet"}))
    with pytest.raises(GenJaxError, match=r"takes no option\(s\) \['width'\]"):
        models.build(ml_collections.ConfigDict({"name": "cnn", "width": 3}))


def test_depth_to_space_puts_each_channel_block_in_its_pixel():
    from gen_jax.models.layers import depth_to_space

    x = jnp.arange(2 * 3 * 3 * 8).reshape(2, 3, 3, 8)
    y = depth_to_space(x)
    assert y.shape == (2, 6, 6, 2)
    # pixel (2i + a, 2j + b) holds channels [(2a + b) * 2, (2a + b) * 2 + 2) of input pixel (i, j)
    for a in range(2):
        for b in range(2):
            block = 2 * a + b
            assert jnp.array_equal(y[:, a::2, b::2, :], x[..., 2 * block : 2 * block + 2])


@pytest.mark.parametrize("name, latent", [("conv_vae", 32), ("mlp_vae", 20)])
def test_vae_encodes_to_a_gaussian_and_decodes_to_image_logits(name, latent):
    model = models.build(ml_collections.ConfigDict({"name": name, "latent_dim": latent}))
    x = jnp.zeros((3, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    mean, logvar = model.apply(variables, x, method="encode")
    assert mean.shape == logvar.shape == (3, latent)
    assert model.apply(variables, mean, method="decode").shape == (3, 28, 28, 1)
