"""The VAE objective checked against independent computations, and a short mocked run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gen_jax import config as config_lib
from gen_jax import tasks, train
from gen_jax.errors import GenJaxError
from gen_jax.run import load_run
from gen_jax.tasks import vae


def tiny_task(**task_options):
    config = config_lib.vae_config()
    config.model = config_lib.ml_collections.ConfigDict(
        {"name": "mlp_vae", "latent_dim": 2, "hidden": 3}
    )
    config.task.update(task_options)
    return tasks.build(config)


@pytest.fixture
def setup():
    task = tiny_task()
    rng = np.random.default_rng(0)
    x = (rng.random((4, 28, 28, 1)) < 0.5).astype(np.float32)
    state = task.init(jax.random.PRNGKey(0), {"image": jnp.asarray(x)})
    return task, state, x


def numpy_elbo_terms(params, x, noise):
    """Reconstruction and KL of the MLP VAE written out in numpy."""
    p = jax.tree.map(np.asarray, params)
    flat = x.reshape(len(x), -1)
    hidden = np.maximum(
        flat @ p["encoder"]["Dense_0"]["kernel"] + p["encoder"]["Dense_0"]["bias"], 0
    )
    mean = hidden @ p["encoder"]["Dense_1"]["kernel"] + p["encoder"]["Dense_1"]["bias"]
    logvar = hidden @ p["encoder"]["Dense_2"]["kernel"] + p["encoder"]["Dense_2"]["bias"]
    z = mean + np.exp(0.5 * logvar) * noise
    hidden = np.maximum(z @ p["decoder"]["Dense_0"]["kernel"] + p["decoder"]["Dense_0"]["bias"], 0)
    logits = hidden @ p["decoder"]["Dense_1"]["kernel"] + p["decoder"]["Dense_1"]["bias"]
    probs = 1 / (1 + np.exp(-logits))
    recon = -np.sum(flat * np.log(probs) + (1 - flat) * np.log(1 - probs), axis=1)
    kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=1)
    return recon, kl


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


def test_iw_bound_with_one_sample_is_the_single_sample_elbo_estimate(setup):
    task, state, x = setup
    rng = jax.random.PRNGKey(3)
    mean, logvar = task.encode(state.params, x)
    z = vae.sample_latents(jax.random.split(rng, 1), mean, logvar)  # the bound's one draw
    logits = task.decode(state.params, z[0])
    log_px_z = vae.bernoulli_log_likelihood(logits, x)
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
    drawn = vae.binarize(key, intensities)
    assert drawn.shape == intensities.shape and drawn.dtype == intensities.dtype
    np.testing.assert_array_equal(drawn, jax.random.bernoulli(key, intensities))
    np.testing.assert_array_equal(vae.binarize(key, jnp.ones((8, 28, 28, 1))), 1)


def test_sample_counts_that_do_not_split_into_chunks_are_refused_at_once():
    with pytest.raises(GenJaxError, match=r"task\.final_eval_samples=1000 is not a multiple"):
        tiny_task(final_eval_samples=1000, eval_sample_chunk=300)


def test_kl_weight_warms_up_linearly_to_beta():
    task = tiny_task(beta=4.0, kl_warmup_steps=100)
    assert [float(task.kl_weight(jnp.asarray(s))) for s in (0, 50, 100, 500)] == [0, 2, 4, 4]


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
    assert set(metrics) == {"neg_elbo", "recon", "kl", "nll"}
    assert metrics["nll"] <= metrics["neg_elbo"] + 1.0
    assert load_run(tmp_path / "run").evaluate() == {"step": 4, **metrics}
    recon = np.asarray(Image.open(tmp_path / "run/samples/reconstructions_0000004.png"))
    prior = np.asarray(Image.open(tmp_path / "run/samples/prior_samples_0000004.png"))
    assert recon.shape == (8 * 30 + 2, 8 * 30 + 2)  # 4 input rows, each above its reconstructions
    assert prior.shape == (8 * 30 + 2, 8 * 30 + 2)


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
    ],
)
def test_settings_the_objective_would_ignore_are_refused(options, message):
    with pytest.raises(GenJaxError, match=message):
        tiny_task(**options)


def test_data_the_vae_cannot_decode_is_a_clear_error():
    task = tiny_task()
    with pytest.raises(GenJaxError, match=r"decodes \(28, 28, 1\) images but the data are \(32"):
        task.init(jax.random.PRNGKey(0), {"image": jnp.zeros((2, 32, 32, 1))})
