"""The diffusion family's mathematics: forward processes, training targets and samplers, checked
against closed forms and against a toy distribution whose exact denoiser is known."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import tasks
from gen_jax.errors import GenJaxError
from gen_jax.tasks import samplers
from gen_jax.tasks.base import init_state
from gen_jax.tasks.gaussian_paths import GaussianPath
from tests.helpers.experiments import TINY_UNET

PATHS = {
    "ddpm_linear_epsilon": GaussianPath("ddpm", "linear", "epsilon"),
    "ddpm_cosine_epsilon": GaussianPath("ddpm", "cosine", "epsilon"),
    "ddpm_cosine_v": GaussianPath("ddpm", "cosine", "v"),
    "flow": GaussianPath("flow", prediction="velocity"),
}
path_ids = pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())


@path_ids
def test_the_forward_process_has_the_closed_form_mean_and_variance(path):
    x0 = jnp.array([0.7, -0.3])
    noise = jax.random.normal(jax.random.PRNGKey(0), (200_000, 2))
    for t in (0.1, 0.5, 0.9):
        x_t = path.noised(jnp.broadcast_to(x0, noise.shape), noise, jnp.full((len(noise),), t))
        a, s = path.coefficients(jnp.asarray(t))
        # 200,000 draws: the sample mean is within 4 standard errors (s / 447) of a x0
        np.testing.assert_allclose(x_t.mean(0), a * x0, atol=4 * float(s) / 447)
        np.testing.assert_allclose(x_t.var(0), s**2, rtol=0.02)


@path_ids
def test_the_signal_to_noise_ratio_decreases_monotonically(path):
    log_snr = path.log_snr(jnp.linspace(0.0, 1.0, 1001))
    assert np.all(np.diff(np.asarray(log_snr)) <= 0) and log_snr[0] > 10 and log_snr[-1] < -10
    if path.objective == "ddpm":  # variance preserving
        a, s = path.coefficients(jnp.linspace(0.0, 1.0, 11))
        np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-6)


def test_the_linear_schedule_is_the_limit_of_ddpms_thousand_betas():
    betas = np.linspace(1e-4, 0.02, 1000)
    discrete = np.cumprod(1.0 - betas)  # Ho et al.'s alpha-bar after steps 1..1000
    a, _ = PATHS["ddpm_linear_epsilon"].coefficients(jnp.arange(1, 1001) / 1000)
    # log(1 - beta) = -beta - beta^2 / 2 - ...: the limit keeps the first term, 1.5% at t = 1
    np.testing.assert_allclose(np.log(a**2), np.log(discrete), rtol=0.02, atol=1e-4)


def closed_form(path: GaussianPath, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a(t), s(t)) in float64, from the papers' formulas, written apart from the code."""
    if path.objective == "flow":  # rectified flow: x_t = (1 - t) x0 + t noise
        return 1.0 - t, t
    if path.schedule == "linear":  # beta(t) = 0.1 + 19.9 t: log alpha-bar = -int_0^t beta
        alpha_bar = np.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
    else:  # Nichol & Dhariwal (2021), eq. 17, s = 0.008
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
        alpha_bar = f(t) / f(0.0)
    return np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)


@path_ids
def test_coefficients_noising_and_targets_match_the_float64_closed_forms(path):
    t = np.linspace(0.02, 0.98, 49)  # inside the clipping of the log-SNR to +-13.8
    a, s = closed_form(path, t)
    got_a, got_s = path.coefficients(jnp.asarray(t, jnp.float32))
    # float32 against float64: s = sqrt(1 - a^2) cancels near t = 0 (a^2 ~ 0.998), ~1e-6 off
    np.testing.assert_allclose(got_a, a, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got_s, s, rtol=2e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    x0, noise = rng.normal(size=(2, len(t), 3))
    column = lambda c: c[:, None]
    expected_target = {  # epsilon; v = a eps - s x0 (Salimans & Ho); u = eps - x0
        "epsilon": noise,
        "v": column(a) * noise - column(s) * x0,
        "velocity": noise - x0,
    }[path.prediction]
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    times = as32(t)
    np.testing.assert_allclose(
        path.noised(as32(x0), as32(noise), times), column(a) * x0 + column(s) * noise, atol=2e-6
    )
    np.testing.assert_allclose(
        path.target(as32(x0), as32(noise), times), expected_target, atol=2e-6
    )


@path_ids
def test_the_targets_output_denoises_exactly(path):
    rng = np.random.default_rng(0)
    x0, noise = rng.normal(size=(2, 8, 4, 4, 1)).astype(np.float32)
    t = jnp.asarray(rng.uniform(0, 1, 8), jnp.float32)
    x_t = path.noised(x0, noise, t)
    denoised, denoised_noise = path.denoised(path.target(x0, noise, t), x_t, t)
    # float32: a / s reach 1e3 at the clipped ends, so the estimates lose ~3 digits there
    np.testing.assert_allclose(denoised, x0, atol=2e-3)
    np.testing.assert_allclose(denoised_noise, noise, atol=2e-3)


# ------------------------------------------------------------------ a toy distribution
MEANS = jnp.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])
WEIGHTS = jnp.array([0.5, 0.3, 0.2])
SPREAD = 0.3  # each component's standard deviation


def mixture_sample(rng, count):
    which = jax.random.choice(rng, 3, (count,), p=WEIGHTS)
    return MEANS[which] + SPREAD * jax.random.normal(jax.random.fold_in(rng, 1), (count, 2))


def exact_denoiser(path, x, t):
    """E[x_0 | x_t] and E[noise | x_t] of the Gaussian mixture, in closed form."""
    a, s = path.coefficients(t)
    variance = a**2 * SPREAD**2 + s**2  # of x_t given the component
    distance = jnp.sum((x[:, None] - a * MEANS[None]) ** 2, -1)
    logits = jnp.log(WEIGHTS) - distance / (2 * variance)
    responsibility = jax.nn.softmax(logits, -1)
    component_means = MEANS[None] + (a * SPREAD**2 / variance) * (x[:, None] - a * MEANS[None])
    x0 = jnp.sum(responsibility[..., None] * component_means, 1)
    return x0, (x - a * x0) / s


def component_fractions(points):
    nearest = jnp.argmin(jnp.sum((points[:, None] - MEANS[None]) ** 2, -1), -1)
    return np.bincount(np.asarray(nearest), minlength=3) / len(points)


SAMPLER_CASES = [  # (objective, sampler, steps): what each needs to land on the distribution
    ("ddpm", "ddim", 50),
    ("ddpm", "ddpm", 200),
    ("ddpm", "euler", 200),
    ("ddpm", "heun", 50),
    ("flow", "euler", 100),
    ("flow", "heun", 25),
    ("flow", "ddim", 100),
]


@pytest.mark.slow
@pytest.mark.parametrize("objective,sampler,steps", SAMPLER_CASES)
def test_each_sampler_driven_by_the_exact_denoiser_recovers_the_distribution(
    objective, sampler, steps
):
    path = PATHS["flow" if objective == "flow" else "ddpm_cosine_epsilon"]
    count = 4000
    noise = jax.random.normal(jax.random.PRNGKey(1), (count, 2))
    denoise = functools.partial(exact_denoiser, path)
    run = jax.jit(lambda noise, rng: samplers.sample(sampler, denoise, path, noise, steps, rng=rng))
    points = run(noise, jax.random.PRNGKey(2))
    # 4,000 draws: a component's fraction has a standard error <= 0.008; 0.03 is ~4 of them
    np.testing.assert_allclose(component_fractions(points), WEIGHTS, atol=0.03)
    reference = mixture_sample(jax.random.PRNGKey(3), count)
    np.testing.assert_allclose(points.mean(0), reference.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(points.T), np.cov(reference.T), rtol=0.1, atol=0.05)
    # each component keeps its spread (a sampler that collapses onto the means fails here)
    nearest = jnp.argmin(jnp.sum((points[:, None] - MEANS[None]) ** 2, -1), -1)
    spread = jnp.sqrt(jnp.mean(jnp.sum((points - MEANS[nearest]) ** 2, -1) / 2))
    np.testing.assert_allclose(spread, SPREAD, rtol=0.1)


@pytest.mark.slow
def test_ddim_at_eta_zero_is_deterministic_and_its_inversion_round_trips():
    path, steps = PATHS["ddpm_cosine_epsilon"], 400
    denoise = functools.partial(exact_denoiser, path)
    noise = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    decode = jax.jit(
        lambda z, rng: samplers.sample("ddim", denoise, path, z, steps, eta=0.0, rng=rng)
    )
    first = decode(noise, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(first, decode(noise, jax.random.PRNGKey(2)))
    inverted = jax.jit(lambda x: samplers.ddim_invert(denoise, path, x, steps))(first)
    # Each direction is first order in the step: 400 steps leave ~0.004 in the bulk (~0.03 at
    # the tails). Points near the boundary between two modes amplify it (1.7 for one of these 64
    # at 200 steps: it lands in the other mode), hence the many steps here.
    np.testing.assert_allclose(inverted, noise, atol=0.05)
    errors = np.abs(decode(inverted, None) - first).max(1)
    assert np.median(errors) < 0.01 and errors.max() < 0.15, np.sort(errors)[-4:]
    stochastic = jax.jit(
        lambda z, rng: samplers.sample("ddim", denoise, path, z, steps, eta=1.0, rng=rng)
    )
    assert not np.allclose(stochastic(noise, jax.random.PRNGKey(1)), first, atol=0.05)


def test_euler_and_heun_converge_at_their_orders_on_a_known_velocity_field():
    """Flow matching on Gaussian data N(m, v): the exact velocity field is linear in x, and its
    ODE's solution at t = 0 from x_1 is m + sqrt(v) x_1 (the optimal-transport map)."""
    path, m, v = PATHS["flow"], 0.5, 0.25

    def denoise(x, t):
        a, s = path.coefficients(t)
        x0 = m + a * v / (a**2 * v + s**2) * (x - a * m)
        return x0, (x - a * x0) / s

    noise = jax.random.normal(jax.random.PRNGKey(0), (16, 1))
    exact = m + np.sqrt(v) * noise
    errors = {}
    for sampler in ("euler", "heun"):
        errors[sampler] = [
            float(jnp.abs(samplers.sample(sampler, denoise, path, noise, n) - exact).max())
            for n in (8, 16, 32)
        ]
    for coarse, fine in zip(errors["euler"], errors["euler"][1:], strict=False):
        assert 1.6 < coarse / fine < 2.5, errors  # first order: halving the step halves it
    for coarse, fine in zip(errors["heun"], errors["heun"][1:], strict=False):
        assert 3.0 < coarse / fine < 5.5, errors  # second order: a quarter
    assert samplers.evaluations("heun", 32) == 63 and samplers.evaluations("euler", 32) == 32


# ------------------------------------------------------------------ the task
def tiny_diffusion(**settings):
    """The diffusion task with the tiny U-Net at a constant learning rate, `settings` applied."""
    config = config_lib.diffusion_config()
    config.model.update({key.split(".")[1]: value for key, value in TINY_UNET.items()})
    config.model.image_shape = (28, 28, 1)
    config.data.batch_size = 8
    config.optimizer.update({"schedule": "constant", "warmup_steps": 0})
    for dotted, value in settings.items():
        section, key = dotted.rsplit(".", 1)
        config[section][key] = value
    return tasks.build(config)


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"task.prediction": "v", "task.schedule": "linear"},
        {"task.objective": "flow", "task.prediction": "velocity"},
    ],
    ids=["ddpm_v", "flow"],
)
def test_training_lowers_the_denoising_loss_on_a_fixed_batch(settings):
    # one level (no down- or upsampling): the smallest U-Net, the fastest to compile
    task = tiny_diffusion(
        **settings, **{"optimizer.learning_rate": 3e-3, "model.channel_multipliers": (1,)}
    )
    # images a denoiser can learn in a few steps: each one flat, at its own level
    levels = np.linspace(-0.9, 0.9, 8, dtype=np.float32)
    batch = {"image": np.broadcast_to(levels[:, None, None, None], (8, 28, 28, 1))}
    state = init_state(task, jax.random.PRNGKey(0), batch)
    step = jax.jit(task.train_step)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    # each step draws new times and noise, so single losses are noisy: compare tens of steps
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses


@pytest.mark.parametrize("distribution, middle", [("uniform", 0.5), ("logit_normal", 0.7275)])
def test_training_times_follow_task_time_distribution(distribution, middle):
    task = tiny_diffusion(**{"task.time_distribution": distribution})
    times, _ = task._draws(jax.random.PRNGKey(0), jnp.zeros((100_000, 1)))
    assert float(times.min()) >= 0 and float(times.max()) < 1  # uniform may draw 0 exactly
    # the share of times within 0.25 of the middle: 0.5 for uniform times, P(|z| < logit(0.75))
    # = 0.7275 for the sigmoid of a standard normal z; 100k draws: standard error ~0.0015
    np.testing.assert_allclose(np.mean(np.abs(times - 0.5) < 0.25), middle, atol=0.006)


@pytest.mark.slow
def test_the_eval_loss_covers_the_first_eval_samples_test_images_only():
    task = tiny_diffusion(**{"task.eval_samples": 5, "model.channel_multipliers": (1,)})
    images = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1), minval=-1, maxval=1)
    state = init_state(task, jax.random.PRNGKey(1), {"image": images})
    state = state.replace(ema=jax.tree.map(lambda p: p + 0.05, state.ema))  # a non-zero output
    batch = lambda index, x: {"image": x, "index": index, "mask": jnp.ones(8)}
    evaluate = jax.jit(task.eval_step)
    first = evaluate(state, batch(jnp.arange(8), images))
    assert float(first["count"]) == 5 and float(first["loss"]) > 0
    changed_past_five = images.at[5:].set(0.0)
    assert evaluate(state, batch(jnp.arange(8), changed_past_five))["loss"] == first["loss"]
    broken = state.replace(ema=jax.tree.map(lambda p: p * jnp.nan, state.ema))
    past = evaluate(broken, batch(jnp.arange(8, 16), images))  # NaN if the network ran
    assert float(past["count"]) == 0 and float(past["loss"]) == 0


@pytest.mark.slow
def test_guidance_mixes_the_conditional_and_unconditional_outputs():
    task = tiny_diffusion(**{"model.num_classes": 10, "task.guidance_scale": 3.0})
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
    state = init_state(task, jax.random.PRNGKey(1), {"image": x})
    # zero-initialised output layers would make every output 0: perturb the weights
    params = jax.tree.map(lambda p: p + 0.1, state.params)
    t, labels = jnp.full((4,), 0.5), jnp.arange(4)
    apply = jax.jit(lambda y: task.model.apply({"params": params}, x, t, y))
    conditional, unconditional = apply(labels), apply(jnp.full((4,), 10))
    assert np.abs(conditional - unconditional).max() > 1e-3
    expected = unconditional + 3.0 * (conditional - unconditional)
    guided = jax.jit(task.predict)(params, x, t, labels)
    np.testing.assert_allclose(guided, expected, atol=1e-4)
    # each guided step runs the network on both halves: twice the unguided evaluations
    unguided = tiny_diffusion(**{"model.num_classes": 10})
    assert task.evaluations(8) == 2 * unguided.evaluations(8) == 16


@pytest.mark.slow
def test_label_dropout_replaces_that_fraction_of_labels_by_the_null_class(monkeypatch):
    task = tiny_diffusion(**{"model.num_classes": 10, "task.label_dropout": 0.25})
    small = {"image": jnp.zeros((2, 28, 28, 1)), "label": jnp.zeros(2, jnp.int32)}
    state = init_state(task, jax.random.PRNGKey(0), small)
    seen = []

    def loss(params, x0, noise, times, labels=None, dropout=None):  # the labels the network sees
        jax.debug.callback(lambda given: seen.append(np.asarray(given)), labels)
        return jnp.zeros(x0.shape[0]) + 0.0 * jax.tree.leaves(params)[0].sum()

    monkeypatch.setattr(task, "loss", loss)
    labels = np.arange(8192) % 10
    batch = {"image": jnp.zeros((8192, 1, 1, 1)), "label": jnp.asarray(labels)}
    jax.block_until_ready(jax.jit(task.train_step)(state, batch))  # compiled: eager is ~20 s
    (given,) = seen
    dropped = given == 10  # the null class, "no label"
    # 8,192 Bernoulli(0.25) draws: standard error 0.0048
    assert abs(dropped.mean() - 0.25) < 0.02
    np.testing.assert_array_equal(given[~dropped], labels[~dropped])  # the rest unchanged


@pytest.mark.parametrize("clip", [True, False])
def test_clip_denoised_clips_the_data_estimate_and_keeps_x_t_consistent(monkeypatch, clip):
    task = tiny_diffusion(**{"task.clip_denoised": clip})
    x = jnp.full((2, 28, 28, 1), 0.5)
    monkeypatch.setattr(task, "predict", lambda *args: jnp.full_like(x, -3.0))  # an x0 of > 1
    x0, noise = task.denoiser(None, None)(x, 0.5)
    a, s = task.path.coefficients(jnp.asarray(0.5))
    unclipped = (x - s * -3.0) / a  # epsilon prediction: x0 = (x - s eps) / a
    assert float(unclipped.min()) > 1.5
    np.testing.assert_allclose(x0, jnp.clip(unclipped, -1, 1) if clip else unclipped, rtol=1e-6)
    np.testing.assert_allclose(a * x0 + s * noise, x, rtol=1e-5)  # the noise fits the clip


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"task.objective": "score"}, "unknown task.objective 'score'"),
        ({"task.schedule": "sigmoid"}, "unknown task.schedule"),
        ({"task.time_distribution": "beta"}, "unknown task.time_distribution 'beta'"),
        ({"task.objective": "flow"}, "does not fit task.objective 'flow'"),
        ({"task.sampler": "dpm"}, "unknown sampler 'dpm'"),
        ({"task.eval_steps": 0}, "at least 1 step"),
        ({"task.guidance_scale": 2.0}, "needs a class-conditional model"),
        ({"task.label_dropout": 1.0}, r"must be in \[0, 1\)"),
        ({"task.final_eval_samples": 3}, "below task.final_eval_samples 3"),
        ({"data.preprocess": ("scale_to_unit",)}, r"in \[-1, 1\]"),
        ({"model.image_shape": (27, 27, 1)}, "divisible by 2; the data are 27x27"),
        ({"model.groups": 3}, "model.groups 3 must divide"),
    ],
)
def test_bad_diffusion_settings_are_clear_errors(settings, message):
    with pytest.raises(GenJaxError, match=message):
        tiny_diffusion(**settings)
