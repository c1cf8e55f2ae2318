"""The VAE objective and its likelihoods checked against independent computations, and short
mocked runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from PIL import Image

from gen_jax import config as config_lib
from gen_jax import data, train
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import logged_metrics
from gen_jax.run import load_run
from gen_jax.tasks import likelihoods, vae
from gen_jax.tasks.base import init_state
from tests.helpers.runs import make_image_folder
from tests.helpers.vae import tiny_task

EPS32 = np.finfo(np.float32).eps


def data_section(preprocess: tuple[str, ...]):
    """A data config with these preprocessing steps (what data.preprocessor reads)."""
    section = config_lib.base_config().data
    section.preprocess = preprocess
    return section


@pytest.fixture
def setup():
    task = tiny_task()
    rng = np.random.default_rng(0)
    x = (rng.random((4, 28, 28, 1)) < 0.5).astype(np.float32)
    state = init_state(task, jax.random.PRNGKey(0), {"image": jnp.asarray(x)})
    return task, state, x


def dense(layer, x):
    return x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)


def numpy_encode(params, x):
    """Mean and log-variance of the MLP VAE's q(z|x), in float64 numpy."""
    hidden = np.maximum(dense(params["encoder"]["Dense_0"], x.reshape(len(x), -1)), 0)
    return dense(params["encoder"]["Dense_1"], hidden), dense(params["encoder"]["Dense_2"], hidden)


def numpy_decode(params, z):
    """The MLP VAE's decoder outputs, flat (batch, outputs), in float64 numpy."""
    return dense(
        params["decoder"]["Dense_1"], np.maximum(dense(params["decoder"]["Dense_0"], z), 0)
    )


def numpy_kl(mean, logvar):
    return 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=-1)


def numpy_elbo_terms(params, x, noise):
    """Bernoulli reconstruction and KL of the MLP VAE written out in numpy."""
    flat = x.reshape(len(x), -1)
    mean, logvar = numpy_encode(params, x)
    probs = 1 / (1 + np.exp(-numpy_decode(params, mean + np.exp(0.5 * logvar) * noise)))
    recon = -np.sum(flat * np.log(probs) + (1 - flat) * np.log(1 - probs), axis=1)
    return recon, numpy_kl(mean, logvar)


@pytest.mark.slow
def test_elbo_terms_match_an_independent_numpy_computation(setup):
    task, state, x = setup
    rng = jax.random.PRNGKey(7)
    noise = np.asarray(jax.random.normal(rng, (4, 2)))
    terms = task.elbo_terms(state.params, jnp.asarray(noise), jnp.asarray(x))
    recon, kl = numpy_elbo_terms(state.params, x, noise)
    # float32 in JAX against float64 numpy: sums over 784 pixels of ~0.7 nats each agree to
    # ~1e-6 relative; the KL of 2 dimensions can be near 0, so it also gets 1e-6 absolute. A
    # wrong term (a sign, a factor 1/2, logits taken as probabilities) is off by whole nats
    np.testing.assert_allclose(terms["recon"], recon, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5, atol=1e-6)


def test_kl_of_identical_gaussians_is_zero_and_positive_otherwise():
    zeros = jnp.zeros((3, 5))
    np.testing.assert_allclose(vae.gaussian_kl(zeros, zeros), 0.0)  # exactly 0 in float32
    assert jnp.all(vae.gaussian_kl(zeros + 0.1, zeros - 0.2) > 0)


@pytest.mark.slow
def test_iw_bound_with_one_sample_is_the_single_sample_elbo_estimate(setup):
    task, state, x = setup
    rng = jax.random.PRNGKey(3)
    mean, logvar = task.encode(state.params, x)
    z = vae.sample_latents(jax.random.split(rng, 1), mean, logvar)  # the bound's one draw
    logits = task.decode(state.params, z[0])
    log_px_z = likelihoods.bernoulli_log_likelihood(logits, x)
    log_prior = vae.gaussian_log_density(z[0], jnp.zeros_like(mean), jnp.zeros_like(mean))
    estimate = log_px_z + log_prior - vae.gaussian_log_density(z[0], mean, logvar)
    # Both sides are the same float32 operations on the same z, in the same order (the bound of
    # one sample adds log 1 = 0), so they agree to a few ulps of the ~-560-nat values (ulp 6e-5):
    # rtol 1e-6 is ~9 ulps. A wrong draw moves the estimate by tens of nats, a missing prior or
    # q term by the ~2-5 nats of log N(z; 0, I) or log q(z|x).
    np.testing.assert_allclose(task.iw_bound(state.params, rng, x, 1, 1), estimate, rtol=1e-6)


def far_from_the_prior(params):
    """The params with the encoder's output biases moved, so that q(z|x) of every example sits
    far from the prior N(0, I) (the tiny model's own posterior is within 0.2 nats of it)."""
    encoder = dict(params["encoder"])
    encoder["Dense_1"] = {**encoder["Dense_1"], "bias": encoder["Dense_1"]["bias"] + MEAN_SHIFT}
    encoder["Dense_2"] = {**encoder["Dense_2"], "bias": encoder["Dense_2"]["bias"] - 2.0}
    return {**params, "encoder": encoder}


MEAN_SHIFT = jnp.array([2.0, -1.5])  # with log-variances lowered by 2: a KL of ~4 nats


@pytest.mark.slow
def test_one_sample_iw_bound_averages_to_the_analytic_elbo(setup):
    """E_q[log p(x|z) + log p(z) - log q(z|x)] = -(E_q[-log p(x|z)] + KL(q || p)): with each
    key's bound and reconstruction taken at the same z, the ~100-nat spread of log p(x|z) cancels
    and what is left is log p(z) - log q(z|x) averaging to -KL."""
    task, state, x = setup
    params = far_from_the_prior(state.params)
    keys = jax.random.split(jax.random.PRNGKey(0), 1000)
    bounds = jax.vmap(lambda key: task.iw_bound(params, key, x, 1, 1))(keys)
    zeros = jnp.zeros((len(x), 2))  # q = N(0, I) draws the bound's own standard normal noise
    noises = jax.vmap(lambda key: vae.sample_latents(jax.random.split(key, 1), zeros, zeros)[0])
    terms = jax.vmap(lambda noise: task.elbo_terms(params, noise, x))(noises(keys))
    gaps = np.asarray(bounds, np.float64) + np.asarray(terms["recon"] + terms["kl"], np.float64)
    # Within 4 Monte-Carlo standard errors of the mean gap (1000 keys), plus 1e-3 nats for the
    # float32 rounding of the two ~550-nat sides, the same computation on the same z (a few ulps
    # of 6e-5 each). Dropping the KL or the log prior moves the mean by its 4-5 nats.
    tolerance = 4 * gaps.std(0) / np.sqrt(len(keys)) + 1e-3
    mean, logvar = (np.asarray(a, np.float64) for a in task.encode(params, x))
    kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=1)  # ~4 nats per example
    assert np.all(tolerance < kl / 10), (tolerance, kl)  # the check can see the KL term
    np.testing.assert_array_less(np.abs(gaps.mean(0)), tolerance)


@pytest.mark.slow
def test_iw_bound_rises_with_k_and_chunking_does_not_change_it(setup):
    task, state, x = setup
    keys = jax.random.split(jax.random.PRNGKey(1), 300)

    def bounds(k, chunk):  # per key and example
        per_key = jax.vmap(lambda key: task.iw_bound(state.params, key, x, k, chunk))
        return np.asarray(jax.jit(per_key)(keys))

    whole = {k: bounds(k, k) for k in (1, 5, 50)}
    assert whole[1].mean() < whole[5].mean() < whole[50].mean()  # ~-620, -552, -545 (300 keys)
    # Per key and example: the same 50 draws, decoded 10 at a time, give the same log-weights up
    # to the rounding of the decoder's products on 40 instead of 200 rows: an ulp or two per
    # logit, under ~1e-4 nats over the 784 pixels of a ~-545-nat sum whose ulp is 6e-5 (measured:
    # equal compiled, 6e-5 apart eagerly); rtol 2e-6 is 1e-3 nats. Drawing a chunk's latents
    # from another key (e.g. one key reused by every chunk) moves each bound by ~1 nat.
    np.testing.assert_allclose(bounds(50, 10), whole[50], rtol=2e-6)


def test_binarisation_draws_each_pixel_as_a_bernoulli_of_its_intensity_on_any_batch_shape():
    # binarize works on a (batch, pixels) view for speed; the draw must stay the image-shaped one
    intensities = jnp.asarray(np.random.default_rng(1).random((8, 28, 28, 1), np.float32))
    key = jax.random.PRNGKey(3)
    drawn = likelihoods.binarize(key, intensities)
    assert drawn.shape == intensities.shape and drawn.dtype == intensities.dtype
    np.testing.assert_array_equal(drawn, jax.random.bernoulli(key, intensities))
    np.testing.assert_array_equal(likelihoods.binarize(key, jnp.ones((8, 28, 28, 1))), 1)


def test_sample_counts_that_do_not_split_into_chunks_are_refused_at_once():
    with pytest.raises(GenJaxError, match=r"task\.final_eval_samples=1000 is not a multiple"):
        tiny_task(final_eval_samples=1000, eval_sample_chunk=300)


def test_kl_weight_warms_up_linearly_to_beta():
    task = tiny_task(beta=4.0, kl_warmup_steps=100)
    assert [float(task.kl_weight(jnp.asarray(s))) for s in (0, 50, 100, 500)] == [0, 2, 4, 4]


@pytest.mark.slow
def test_a_short_mocked_run_reports_elbo_terms_and_nll(tmp_path, mock_mnist):
    config = config_lib.vae_config()
    config_lib.apply_overrides(
        config,
        [
            "--config.model.name=mlp_vae",  # the same objective, compiled in a fraction
            "--config.train.num_steps=4",
            "--config.data.batch_size=16",
            "--config.data.eval_batch_size=64",
            "--config.task.eval_samples=4",
            "--config.task.final_eval_samples=8",
            "--config.task.eval_sample_chunk=4",
        ],
    )
    metrics = train.run(config, tmp_path / "run")
    assert set(metrics) == {"neg_elbo", "recon", "kl", "nll", "bits_per_dim"}
    assert metrics["nll"] <= metrics["neg_elbo"] + 1.0
    # the sums of one float32 division by a constant: a few ulps apart
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (784 * math.log(2)), 1e-6)
    assert load_run(tmp_path / "run").evaluate() == {"step": 4, **metrics}
    recon = np.asarray(Image.open(tmp_path / "run/samples/reconstructions_0000004.png"))
    prior = np.asarray(Image.open(tmp_path / "run/samples/prior_samples_0000004.png"))
    assert recon.shape == (8 * 30 + 2, 8 * 30 + 2)  # 4 input rows, each above its reconstructions
    assert prior.shape == (8 * 30 + 2, 8 * 30 + 2)


@pytest.mark.slow
def test_pictures_show_as_many_rows_of_eight_inputs_as_the_images_fill(setup):
    task, state, _ = setup
    images = jnp.asarray(np.random.default_rng(1).random((20, 28, 28, 1)), jnp.float32)
    layouts = task.pictures(state, images)
    assert layouts["reconstructions"].shape == (4, 8, 28, 28, 1)  # 2 rows, each over its decoding
    np.testing.assert_array_equal(layouts["reconstructions"][2], images[8:16])
    assert layouts["prior_samples"].shape == (8, 8, 28, 28, 1)
    assert set(task.pictures(state, images[:5])) == {"prior_samples"}  # no row of 8 to show


@pytest.mark.parametrize(
    "options, message",
    [
        ({"objective": "vampprior"}, "unknown task.objective 'vampprior'"),
        ({"train_samples": 0}, "task.train_samples 0 must be at least 1"),
        ({"train_samples": 5}, "task.train_samples 5 is the k of the 'iwae' objective"),
        ({"objective": "iwae", "beta": 4.0}, "^task.beta=4.0: beta and kl_warmup_steps weight"),
        ({"objective": "iwae", "kl_warmup_steps": 10}, "^task.kl_warmup_steps=10: beta and"),
        ({"likelihood": "gaussian"}, r"unknown task.likelihood 'gaussian'; use one of \("),
    ],
)
def test_settings_the_objective_would_ignore_are_refused(options, message):
    with pytest.raises(GenJaxError, match=message):
        tiny_task(**options)


def test_data_the_vae_cannot_decode_is_a_clear_error():
    task = tiny_task()
    message = r"decodes \(28, 28, 1\) images but the data are \(32, 32, 3\); set config.model.im"
    with pytest.raises(GenJaxError, match=message):
        task.init(jax.random.PRNGKey(0), {"image": jnp.zeros((2, 32, 32, 3))})


def test_bernoulli_likelihood_refuses_images_outside_the_unit_range():
    with pytest.raises(GenJaxError, match=r"'bernoulli' binarises intensities in \[0, 1\]"):
        tiny_task(preprocess=("scale_to_symmetric",))
    tiny_task(preprocess=("scale_to_symmetric",), likelihood="logistic")  # takes any range


# ----------------------------------------------------------------------------- logistic
PREPROCESSINGS = ("scale_to_unit", "scale_to_symmetric")


def all_levels(preprocess):
    """The 256 levels of an 8-bit pixel as the data reach the task, and their range."""
    images = data.preprocessor(data_section((preprocess,)))(
        {"image": np.arange(256, dtype=np.uint8)}
    )
    return images["image"], data.pixel_range(data_section((preprocess,)))


def scipy_discretized_logistic_log_prob(levels, mean, log_scale, low, high):
    """log P(level k) in float64 from scipy's logistic CDF between the bin's edges low + (k +-
    1/2) (high - low) / 255 (the end bins open), each difference taken in its smaller tail (the
    CDFs below the mean, the survival functions above), where it keeps its digits."""
    width = (high - low) / 255
    centre = low + levels * width
    lower = np.where(levels == 0, -np.inf, centre - width / 2)
    upper = np.where(levels == 255, np.inf, centre + width / 2)
    logistic = scipy.stats.logistic(loc=mean, scale=np.exp(log_scale))
    with np.errstate(divide="ignore"):  # log(1 - 0) of the end bins' infinite edge
        by_cdf = logistic.logcdf(upper) + np.log(
            -np.expm1(logistic.logcdf(lower) - logistic.logcdf(upper))
        )
        by_sf = logistic.logsf(lower) + np.log(
            -np.expm1(logistic.logsf(upper) - logistic.logsf(lower))
        )
    return np.where(centre <= mean, by_cdf, by_sf)


def level_log_probs(preprocess, mean_fractions, log_scales):
    """log P of every level (256, means, scales), means placed at fractions of the range."""
    x, (low, high) = all_levels(preprocess)
    means = np.float32(low + np.asarray(mean_fractions) * (high - low))
    log_probs = likelihoods.discretized_logistic_log_prob(
        jnp.asarray(x)[:, None, None],
        jnp.asarray(means)[None, :, None],
        jnp.asarray(log_scales, jnp.float32)[None, None, :],
        low,
        high,
    )
    return np.asarray(log_probs, np.float64), means, (low, high)


# Means (as fractions of the range) below it, at its ends, inside it (0.37: 94.35 levels up, off
# the bin edges; 0.5: on the edge between levels 127 and 128) and above it; log-scales from -20
# (one or two bins hold all the mass) to 100 (the end bins do; exp(-100) underflows float32)
MEAN_FRACTIONS = (-3.0, 0.0, 0.37, 0.5, 1.0, 6.0)


@pytest.mark.parametrize("preprocess", PREPROCESSINGS)
def test_discretized_logistic_probabilities_of_the_256_levels_sum_to_one(preprocess):
    log_scales = (-20, -9, -6, -4, -2, 0, 3, 10, 14, 30, 100)
    log_probs, _, _ = level_log_probs(preprocess, MEAN_FRACTIONS, log_scales)
    assert np.all(np.isfinite(log_probs))
    # Measured within 7e-6 of 1 (float32): a bin edge shared by two levels is computed from each
    # level's centre, ulps of the range apart, and the scale magnifies that in the mass moved; a
    # closed end bin or an edge off by a bin loses or doubles up to the whole mass
    np.testing.assert_allclose(np.exp(log_probs).sum(0), 1.0, atol=2e-5)


@pytest.mark.parametrize("preprocess", PREPROCESSINGS)
def test_discretized_logistic_matches_the_logistic_cdf_computed_in_float64(preprocess):
    # (scales past e^14 leave bins too narrow for float64 CDF differences; see the sum test)
    log_scales = np.array([-9, -6, -4, -2, 0, 3, 10, 14], np.float64)
    log_probs, means, (low, high) = level_log_probs(preprocess, MEAN_FRACTIONS, log_scales)
    levels = np.arange(256)[:, None, None]
    expected = scipy_discretized_logistic_log_prob(
        levels, means[None, :, None].astype(np.float64), log_scales[None, None, :], low, high
    )
    # float32 rounds each term to its ulp (|log P| and the O(1) terms), and the level and the mean
    # (up to |mean|, |low|, |high|) to theirs, which the scale magnifies in the bin's edges (the
    # log-sigmoids' slopes are at most 1): 4 ulps of each. For an O(1) mean and scale that is
    # ~1e-6 nats; an edge half a bin off or a tail taken for the other costs tenths of a nat
    size = np.maximum(np.abs(means), max(abs(low), abs(high)))[None, :, None]
    tolerance = 4 * EPS32 * (np.abs(expected) + 1 + size * np.exp(-log_scales))
    np.testing.assert_array_less(np.abs(log_probs - expected), tolerance)


def logistic_setup(preprocess=("scale_to_unit",), image_shape=(8, 8, 3)):
    """A tiny logistic MLP VAE, its decoder's log-scales lowered by 3 (to -7...0.4) and means
    moved by the middle of the range (to about the range +-3), so that scales near a bin's width
    and far beyond it both count, and a batch of random 8-bit images as the data bring them."""
    task = tiny_task(image_shape, preprocess, likelihood="logistic")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, *image_shape), dtype=np.uint8)
    x = data.preprocessor(data_section(preprocess))({"image": images})["image"]
    state = init_state(task, jax.random.PRNGKey(0), {"image": jnp.asarray(x)})
    low, high = task.low, task.high
    channels = image_shape[-1]
    shift = np.concatenate([np.full(channels, (low + high) / 2), np.full(channels, -3.0)])
    out = state.params["decoder"]["Dense_1"]
    bias = out["bias"] + jnp.tile(
        jnp.asarray(shift, jnp.float32), out["bias"].size // (2 * channels)
    )
    params = {
        **state.params,
        "decoder": {**state.params["decoder"], "Dense_1": {**out, "bias": bias}},
    }
    return task, state.replace(params=params), x


def numpy_logistic_log_px_z(params, z, x, low, high):
    """log p(x|z) of the logistic MLP VAE: its decoder in numpy, the probabilities from scipy."""
    outputs = numpy_decode(params, z).reshape(*x.shape[:-1], 2, x.shape[-1])
    levels = np.round((x - low) / (high - low) * 255)
    log_probs = scipy_discretized_logistic_log_prob(
        levels, outputs[..., 0, :], outputs[..., 1, :], low, high
    )
    return log_probs.reshape(len(x), -1).sum(1)


def numpy_gaussian_log_density(z, mean, logvar):
    return -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar), axis=-1)


@pytest.mark.slow
def test_logistic_elbo_terms_and_iw_bound_match_an_independent_numpy_computation():
    task, state, x = logistic_setup()
    params = jax.tree.map(np.asarray, state.params)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (4, 2)))
    terms = jax.jit(task.elbo_terms)(state.params, jnp.asarray(noise), jnp.asarray(x))
    mean, logvar = numpy_encode(params, x)
    z = mean + np.exp(0.5 * logvar) * noise
    recon = -numpy_logistic_log_px_z(params, z, x, task.low, task.high)
    # float32 against float64: measured within 1.1e-6 relative, on sums of 1,600 to 20,000 nats
    # over 192 values whose inverse scales (up to e^7) magnify the ~1e-7 rounding of the means;
    # rtol 1e-5 is ten times that. A bin of the wrong width, or means and log-scales swapped,
    # move each sum by tens of nats or more (> 1e-3 relative)
    np.testing.assert_allclose(terms["recon"], recon, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], numpy_kl(mean, logvar), rtol=1e-5, atol=1e-6)

    rng, k = jax.random.PRNGKey(3), 5
    z = np.asarray(vae.sample_latents(jax.random.split(rng, k), *task.encode(state.params, x)))
    weights = np.stack(
        [
            numpy_logistic_log_px_z(params, z_i, x, task.low, task.high)
            + numpy_gaussian_log_density(z_i, 0.0, 0.0)
            - numpy_gaussian_log_density(z_i, mean, logvar)
            for z_i in z
        ]
    )
    expected = scipy.special.logsumexp(weights, axis=0) - np.log(k)
    # the same latents (drawn by the bound's documented keys), the same 1e-5 margin as above
    bound = jax.jit(task.iw_bound, static_argnums=(3, 4))(state.params, rng, x, k, k)
    np.testing.assert_allclose(bound, expected, rtol=1e-5)


def ignoring_latents(params):
    """The params with q(z|x) = N(0, I) = p(z) exactly and a decoder that ignores z: every
    importance weight is p(x), so ELBO and IW bound are both log p(x) whatever is drawn."""
    zeroed = lambda layer: jax.tree.map(jnp.zeros_like, layer)
    encoder = {**params["encoder"], "Dense_1": zeroed(params["encoder"]["Dense_1"])}
    encoder["Dense_2"] = zeroed(params["encoder"]["Dense_2"])
    out = params["decoder"]["Dense_1"]
    decoder = {**params["decoder"], "Dense_1": {**out, "kernel": jnp.zeros_like(out["kernel"])}}
    return {**params, "encoder": encoder, "decoder": decoder}


@pytest.mark.slow
@pytest.mark.parametrize("preprocess", PREPROCESSINGS)
def test_logistic_eval_reports_the_nll_of_the_images_as_they_are_in_nats_and_bits(preprocess):
    task, state, x = logistic_setup((preprocess,))
    state = state.replace(params=ignoring_latents(state.params))
    batch = {"image": jnp.asarray(x), "index": jnp.arange(4), "mask": jnp.array([1, 1, 1, 0.0])}
    sums = jax.device_get(jax.jit(task.eval_step)(state, batch))
    params = jax.tree.map(np.asarray, state.params)
    nll = -numpy_logistic_log_px_z(params, np.zeros((4, 2)), x, task.low, task.high)[:3].sum()
    # the 1e-5 of the ELBO test; binarised images (levels 0 and 255 only) are ~400 nats off
    for name in ("recon", "neg_elbo", "nll"):
        np.testing.assert_allclose(sums[name], nll, rtol=1e-5, err_msg=name)
    assert sums["kl"] == 0 and sums["count"] == 3
    # one float32 division of the sum by a constant: an ulp or two
    dims = math.prod(x.shape[1:])
    np.testing.assert_allclose(sums["bits_per_dim"], sums["nll"] / (dims * np.log(2)), rtol=1e-6)


@pytest.mark.slow
def test_logistic_decoder_outputs_means_and_log_scales_and_pictures_show_the_means_in_0_1():
    task, state, x = logistic_setup(("scale_to_symmetric",))
    z = jax.random.normal(jax.random.PRNGKey(0), (5, 2)) * 50  # far out: means beyond [-1, 1]
    outputs = task.decode(state.params, z)
    assert outputs.shape == (5, 8, 8, 6)  # 3 means, then 3 log-scales
    images = task.decoded_images(state.params, z)
    np.testing.assert_allclose(images, (np.clip(outputs[..., :3], -1, 1) + 1) / 2, atol=1e-7)
    assert images.min() == 0 and images.max() == 1  # clipped at both ends
    x = jnp.concatenate([jnp.asarray(x)] * 2)  # a row of 8
    layouts = task.pictures(state, x)
    np.testing.assert_array_equal(layouts["reconstructions"][0], (x + 1) / 2)  # inputs in [0, 1]
    for layout in layouts.values():
        assert layout.min() >= 0 and layout.max() <= 1


@pytest.mark.slow
def test_a_short_run_of_a_logistic_vae_on_a_32x32x3_folder_reports_nll_and_bits(tmp_path):
    make_image_folder(tmp_path / "images", {"train": 64, "test": 32}, shape=(32, 32, 3))
    config = config_lib.vae_config()
    config_lib.apply_overrides(
        config,
        [
            "--config.task.likelihood=logistic",
            f"--config.data.folder={tmp_path / 'images'}",
            f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.model.name=mlp_vae",  # image_shape from the data
            "--config.model.hidden=16",
            "--config.model.latent_dim=4",
            "--config.train.num_steps=3",
            "--config.data.batch_size=16",
            "--config.data.eval_batch_size=32",
            "--config.task.eval_samples=2",
            "--config.task.final_eval_samples=4",
            "--config.task.eval_sample_chunk=2",
        ],
    )
    metrics = train.run(config, tmp_path / "run")
    assert set(metrics) == {"neg_elbo", "recon", "kl", "nll", "bits_per_dim"}
    assert all(np.isfinite(value) for value in metrics.values())
    # the sums of one float32 division by a constant: a few ulps apart
    dims = 32 * 32 * 3
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (dims * math.log(2)), 1e-6)
    assert 0 < metrics["bits_per_dim"] < 16  # random pixels: ~8 bits for a model that learnt them
    prior = np.asarray(Image.open(tmp_path / "run/samples/prior_samples_0000003.png"))
    assert prior.shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    run = load_run(tmp_path / "run")
    samples = run.sample(3)
    assert samples.shape == (3, 32, 32, 3) and samples.min() >= 0 and samples.max() <= 1


@pytest.mark.slow
def test_a_vae_run_scores_its_prior_samples_in_the_classifiers_space(tiny_run):
    """The decoder's mean images of 64 prior samples, scored by the same code as the GANs'."""
    classifier = tiny_run("classifier")
    run = tiny_run("vae", **{"task.classifier_workdir": str(classifier), "task.prior_samples": 64})
    final = logged_metrics(run, 10, "test")
    assert {"fid", "inception_score", "precision", "recall", "floor_fid", "nll"} <= set(final)
    assert np.isfinite(final["fid"]) and final["classes_covered"] >= 1
