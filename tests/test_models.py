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
