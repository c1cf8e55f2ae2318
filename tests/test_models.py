"""Model shapes and sizes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gen_jax import models
from gen_jax.errors import GenJaxError
from gen_jax.models import airbench, layers


def count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_baseline_cnn_matches_the_flax_example_size_and_shapes():
    model = models.build(ml_collections.ConfigDict({"name": "cnn"}))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
    assert count(variables["params"]) == 824_458
    assert model.apply(variables, jnp.zeros((5, 28, 28, 1))).shape == (5, 10)


@pytest.mark.slow
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
    with pytest.raises(GenJaxError, match=r"unknown model\.dtype 'float8'"):
        models.build(ml_collections.ConfigDict({"name": "conv_vae", "dtype": "float8"}))


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


@pytest.mark.parametrize("outputs_per_channel", [1, 2])  # bernoulli: a logit; logistic: 2
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3), (20, 36, 2)])
@pytest.mark.parametrize("name, latent", [("conv_vae", 32), ("mlp_vae", 20)])
def test_vae_encodes_to_a_gaussian_and_decodes_outputs_per_channel_at_the_image_shape(
    name, latent, image_shape, outputs_per_channel
):
    settings = {"image_shape": image_shape, "outputs_per_channel": outputs_per_channel}
    model = models.build(
        ml_collections.ConfigDict({"name": name, "latent_dim": latent, **settings})
    )
    x = jnp.zeros((3, *image_shape))
    # shapes only: jax.eval_shape traces every layer without computing (0.3 s, not 10 s, a case)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    mean, logvar = jax.eval_shape(functools.partial(model.apply, method="encode"), variables, x)
    assert mean.shape == logvar.shape == (3, latent)
    height, width, channels = image_shape
    decoded = jax.eval_shape(functools.partial(model.apply, method="decode"), variables, mean)
    assert decoded.shape == (3, height, width, outputs_per_channel * channels)


@pytest.mark.parametrize("name, size", [("conv_vae", 1_305_393), ("mlp_vae", 815_824)])
def test_the_default_vaes_model_mnist_with_the_parameters_of_runs_saved_before_image_shape(
    name, size
):
    model = models.build(ml_collections.ConfigDict({"name": name}))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert count(variables["params"]) == size
    assert variables["params"]["decoder"]["Dense_1"]["kernel"].shape[1] == (
        7 * 7 * 32 if name == "conv_vae" else 784
    )


@pytest.mark.parametrize(
    "name, image_shape, message",
    [
        (
            "conv_vae",
            (30, 30, 3),
            r"conv_vae cannot decode 30x30 images \(model.image_shape \(30, 30, 3\)\): it "
            r"supports a height and width divisible by 4",
        ),
        ("conv_vae", (32, 30, 3), r"cannot decode 32x30 images"),
        ("mlp_vae", (28, 28), r"model.image_shape \(28, 28\) is not \(height, width, channels\)"),
        ("conv_vae", (28, 28, 0), r"model.image_shape \(28, 28, 0\) is not \(height, width, ch"),
    ],
)
def test_image_shapes_a_vae_cannot_model_are_refused_when_it_is_built(name, image_shape, message):
    with pytest.raises(GenJaxError, match=message):
        models.build(ml_collections.ConfigDict({"name": name, "image_shape": image_shape}))


def test_mlp_vae_takes_any_image_size():
    model = models.build(ml_collections.ConfigDict({"name": "mlp_vae", "image_shape": (30, 30, 3)}))
    assert model.decoder.output_shape == (30, 30, 3)


def test_an_option_the_task_decides_may_be_repeated_but_not_contradicted():
    def build(**settings):
        config = ml_collections.ConfigDict({"name": "mlp_vae", **settings})
        return models.build(config, outputs_per_channel=2)

    assert build().decoder.output_shape == (28, 28, 2)
    assert build(outputs_per_channel=2).decoder.output_shape == (28, 28, 2)
    with pytest.raises(GenJaxError, match=r"config.model.outputs_per_channel=1, but the task's"):
        build(outputs_per_channel=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "size, channels, generator_features, num_classes, downsampling",
    [
        (28, 1, (128, 64, 32), 0, "strided"),
        (28, 1, (128, 64, 32), 0, "space_to_depth"),
        (32, 3, (256, 128, 64, 32), 0, "strided"),
        (64, 3, (64, 32, 16, 8, 8), 10, "space_to_depth"),
    ],
)
def test_dcgan_pairs_map_noise_to_images_in_range_and_images_to_one_score(
    size, channels, generator_features, num_classes, downsampling
):
    pair = models.build(
        ml_collections.ConfigDict(
            {
                "name": "dcgan",
                "noise_dim": 16,
                "image_size": size,
                "channels": channels,
                "generator_features": generator_features,
                "num_classes": num_classes,
                "downsampling": downsampling,
            }
        )
    )
    noise = jax.random.normal(jax.random.PRNGKey(0), (3, 16))
    labels = jnp.arange(3) if num_classes else None
    g_vars = pair.generator.init(jax.random.PRNGKey(1), noise, labels)
    images = pair.generator.apply(g_vars, noise, labels)
    assert images.shape == (3, size, size, channels)
    assert float(jnp.abs(images).max()) <= 1.0
    d_vars = pair.discriminator.init(jax.random.PRNGKey(2), images, labels)
    assert pair.discriminator.apply(d_vars, images, labels).shape == (3,)


def test_dcgan_image_size_must_halve_once_per_upsampling():
    config = {"name": "dcgan", "image_size": 30, "generator_features": (64, 32, 16)}
    with pytest.raises(GenJaxError, match="not divisible by 2\\*\\*2"):
        models.build(ml_collections.ConfigDict(config))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"downsampling": "pooled"}, "unknown model.downsampling 'pooled'"),
        (
            {"downsampling": "space_to_depth", "discriminator_features": (8, 8, 8)},
            "not divisible by 2\\*\\*3: 'space_to_depth'",
        ),
    ],
)
def test_bad_dcgan_downsampling_is_a_clear_error(settings, message):
    with pytest.raises(GenJaxError, match=message):
        models.build(ml_collections.ConfigDict({"name": "dcgan", **settings}))


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, window", [((3, 31, 31, 8), 2), ((2, 9, 9, 5), 3), ((2, 3, 3, 4), 3)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_and_its_gradient_are_flax_max_pools_bit_for_bit(shape, window, ties):
    rng = np.random.default_rng(0)
    # small integers tie within most windows: the gradient must pick the same maximum as XLA's
    x = rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)
    x = jnp.asarray(x, jnp.float32)
    pooled_shape = (shape[0], shape[1] // window, shape[2] // window, shape[3])
    cotangent = jnp.asarray(rng.standard_normal(pooled_shape), jnp.float32)
    flax_pool = lambda x: nn.max_pool(x, (window, window), strides=(window, window))
    ours, pullback = jax.vjp(lambda x: layers.max_pool(x, window), x)
    theirs, flax_pullback = jax.vjp(flax_pool, x)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(pullback(cotangent)[0], flax_pullback(cotangent)[0])


@pytest.mark.slow
def test_space_to_depth_undoes_depth_to_space():
    from gen_jax.models.layers import depth_to_space, space_to_depth

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 8))
    assert jnp.array_equal(space_to_depth(depth_to_space(x)), x)


@pytest.mark.slow
def test_space_to_depth_downsampling_is_a_stride_2_4x4_convolution_one_pixel_later():
    """Its 2x2 kernel over 2x2 pixel blocks, rearranged to 4x4, gives the stride-2 convolution
    whose windows start at even pixels (padding 0 before, 2 after) - not SAME's (1, 1)."""
    from gen_jax.models.layers import downsample

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 3))

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return downsample(x, 5, "space_to_depth")

    layer = Layer()
    params = layer.init(jax.random.PRNGKey(1), x)["params"]
    params["Conv_0"]["bias"] = jax.random.normal(jax.random.PRNGKey(2), (5,))  # not zeros
    kernel = params["Conv_0"]["kernel"]  # (cell y, cell x, (pixel y, pixel x, channel), out)
    kernel = kernel.reshape(2, 2, 2, 2, 3, 5).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 3, 5)
    strided = jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((0, 2), (0, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    expected = strided + params["Conv_0"]["bias"]
    # the same 48 products per output, summed in another order by another convolution: a few
    # ulps of outputs ~1; a kernel rearranged wrongly gives differences of order 1
    assert jnp.allclose(layer.apply({"params": params}, x), expected, atol=1e-5)


def test_a_strided_discriminator_keeps_the_parameter_names_of_runs_saved_before_downsampling():
    pair = models.build(ml_collections.ConfigDict({"name": "dcgan"}))
    params = pair.discriminator.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert sorted(params) == ["BatchNorm_0", "Conv_0", "Conv_1", "Dense_0"]


@pytest.mark.slow
def test_airbench_whitening_layer_decorrelates_the_patches_it_was_initialised_on():
    scales = jnp.array([1.0, 3.0, 0.3])
    images = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 12, 3)) * scales
    images = images + jnp.roll(images, 1, axis=2)  # neighbouring pixels correlated
    kernel = airbench.whitening_kernel(images, size=2, eps=0.0)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    convolved = jax.lax.conv_general_dilated(
        images, kernel[..., :12], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ).reshape(-1, 12)
    second_moment = convolved.T @ convolved / len(convolved)
    # float32: the smallest eigenvalue here is 0.004 of the largest, so rounding of ~1e-6 in
    # the moments grows up to ~250x (the condition number) in the whitened moments; 2e-3
    # leaves a ~10x margin for another CPU's summation order
    np.testing.assert_allclose(second_moment, np.eye(12), atol=2e-3)


@pytest.mark.slow
def test_airbench_starts_its_convs_as_identities_and_keeps_the_whitening_out_of_params():
    kernel = airbench.identity_then_default(jax.random.PRNGKey(0), (3, 3, 4, 6))
    np.testing.assert_array_equal(kernel[1, 1, :, :4], np.eye(4))
    assert (
        float(jnp.abs(kernel[0, 0, :, :4]).max()) == 0 and float(jnp.abs(kernel[..., 4:]).max()) > 0
    )
    model = models.build(ml_collections.ConfigDict({"name": "airbench", "widths": (8, 16, 16)}))
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(2), x))(images)
    assert "whitening_kernel" in variables["batch_stats"]
    assert "whitening_kernel" not in variables["params"]
    logits, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10)
    kept = updated["batch_stats"]["whitening_kernel"]
    np.testing.assert_array_equal(kept, variables["batch_stats"]["whitening_kernel"])
    # the same math compiled (init) and eager: float32 rounding of the moments, amplified by
    # 1 / sqrt(eigenvalue) as above
    np.testing.assert_allclose(kept, airbench.whitening_kernel(images), rtol=1e-4, atol=1e-4)
