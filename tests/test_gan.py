"""The GAN objective and the sample-quality metrics, checked against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from gen_jax import checkpoint, feature_spaces, sample_quality, tasks, train
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import logged_metrics
from gen_jax.run import load_run
from gen_jax.tasks import gan_losses as losses
from gen_jax.tasks.base import init_state
from tests.helpers.experiments import write_experiment
from tests.helpers.runs import copied_run

softplus = lambda x: np.log1p(np.exp(x))


def tiny_gan(**settings):
    config = config_lib.gan_config()
    config.model.update({"noise_dim": 4, "generator_features": (8, 4, 2)})
    config.model.discriminator_features = (4, 8)
    config.data.batch_size = 8
    for dotted, value in settings.items():
        section, key = dotted.rsplit(".", 1)
        node = config
        for part in section.split("."):
            node = node[part]
        node[key] = value
    return tasks.build(config)


# ----------------------------------------------------------------------------- losses
def test_losses_match_hand_computed_values():
    # pytest.approx's default (1e-6 relative): float32 losses of two scores each, a few ulps
    # (1.2e-7) from float64 numpy; a wrong sign or a missing term is off by whole units
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    expected_bce = np.mean(softplus(-np.array([2.0, -1.0])) + softplus(np.array([0.5, -3.0])))
    assert losses.discriminator_loss("non_saturating", real, fake) == pytest.approx(expected_bce)
    assert losses.generator_loss("non_saturating", fake) == pytest.approx(
        np.mean(softplus(-np.array([0.5, -3.0])))
    )
    # hinge: mean(relu(1 - real) + relu(1 + fake)) = mean(0 + 1.5, 2 + 0)
    assert losses.discriminator_loss("hinge", real, fake) == pytest.approx(1.75)
    assert losses.generator_loss("hinge", fake) == pytest.approx(1.25)
    assert losses.discriminator_loss("wasserstein", real, fake) == pytest.approx(-1.75)
    assert losses.generator_loss("wasserstein", fake) == pytest.approx(1.25)
    # at D = 1/2 everywhere the cross-entropy is 2 log 2
    zeros = jnp.zeros(3)
    assert losses.discriminator_loss("non_saturating", zeros, zeros) == pytest.approx(2 * np.log(2))


@pytest.mark.slow
def test_gradient_penalty_is_zero_for_unit_gradient_norm_and_positive_otherwise():
    rng = jax.random.PRNGKey(0)
    real = jax.random.normal(rng, (6, 4, 4, 1))
    fake = jax.random.normal(jax.random.PRNGKey(1), (6, 4, 4, 1))
    direction = jax.random.normal(jax.random.PRNGKey(2), (4, 4, 1))
    unit = direction / jnp.linalg.norm(direction)
    linear = lambda scale: lambda x: jnp.sum(x * scale * unit, axis=(1, 2, 3))
    # (|g| - 1)^2 of a float32 norm of 16 terms: ~1e-7 from exact; a wrong norm is off by > 0.1
    assert losses.gradient_penalty(linear(1.0), real, fake, rng) == pytest.approx(0.0, abs=1e-6)
    assert losses.gradient_penalty(linear(3.0), real, fake, rng) == pytest.approx(4.0, rel=1e-5)
    quadratic = lambda x: jnp.sum(x**2, axis=(1, 2, 3))  # gradient norm varies with the point
    assert losses.gradient_penalty(quadratic, real, fake, rng) > 0.1


def test_r1_penalty_is_the_mean_squared_input_gradient_at_the_real_examples():
    real = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1))
    weights = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 1))
    linear = lambda x: jnp.sum(x * weights, axis=(1, 2, 3))  # gradient `weights` everywhere
    expected = float(jnp.sum(weights**2))
    # float32 sums of 16 squares, summed in another order: ~1e-7 relative apart; a penalty of
    # the wrong images, a missing square or a sum over the batch is off by factors
    assert losses.r1_penalty(linear, real) == pytest.approx(expected, rel=1e-5)
    # x -> sum(x^2) has gradient 2x: the penalty is the mean of 4 |x|^2 over the real examples
    quadratic = lambda x: jnp.sum(x**2, axis=(1, 2, 3))
    expected = float(jnp.mean(4 * jnp.sum(real**2, axis=(1, 2, 3))))
    assert losses.r1_penalty(quadratic, real) == pytest.approx(expected, rel=1e-5)
    constant = lambda x: jnp.zeros(x.shape[0])
    assert losses.r1_penalty(constant, real) == 0.0


@pytest.mark.slow
def test_the_r1_penalty_is_logged_and_changes_the_discriminator_update():
    images = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1), minval=-1.0, maxval=1.0)
    batch = {"image": images, "label": jnp.zeros(8, jnp.int32)}
    results = {}
    for weight in (0.0, 10.0):
        task = tiny_gan(**{"model.discriminator_norm": "none", "task.r1_penalty": weight})
        state = init_state(task, jax.random.PRNGKey(0), batch)
        results[weight] = jax.jit(task.train_step)(state, batch)
    (plain, plain_metrics), (penalised, metrics) = results[0.0], results[10.0]
    assert float(plain_metrics["r1_penalty"]) == 0.0 and float(metrics["r1_penalty"]) > 0.0
    # the same initial parameters and batch: the loss before the penalty is the same number,
    # up to the ulps of another compiled program (the penalty's gradient fuses differently)
    assert float(metrics["d_loss"]) == pytest.approx(float(plain_metrics["d_loss"]))
    changed = jax.tree.map(  # an update 10x the penalty's gradient moves params by >> 1e-5
        lambda a, b: not np.allclose(a, b),
        plain.discriminator.params,
        penalised.discriminator.params,
    )
    assert any(jax.tree.leaves(changed))


@pytest.mark.slow
@pytest.mark.parametrize("penalty", ["task.r1_penalty", "task.gradient_penalty"])
def test_the_checked_loss_is_what_both_players_minimise_penalties_included(penalty):
    images = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1), minval=-1.0, maxval=1.0)
    batch = {"image": images, "label": jnp.zeros(8, jnp.int32)}
    task = tiny_gan(**{"model.discriminator_norm": "none", penalty: 10.0})
    state = init_state(task, jax.random.PRNGKey(0), batch)
    metrics = {k: float(v) for k, v in jax.jit(task.train_step)(state, batch)[1].items()}
    name = {"task.r1_penalty": "r1_penalty", "task.gradient_penalty": "gradient_penalty"}[penalty]
    assert metrics[name] > 0.0
    expected = metrics["d_loss"] + 10.0 * metrics[name] + metrics["g_loss"]
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_every_critic_step_draws_its_own_noise():
    task = tiny_gan(
        **{"task.critic_steps": 4, "optimizer.discriminator.learning_rate": 0.0},
    )
    images = jnp.zeros((8, 28, 28, 1))  # every critic step sees the same real images
    state = init_state(
        task, jax.random.PRNGKey(0), {"image": images, "label": jnp.zeros(8, jnp.int32)}
    )
    _, metrics = jax.jit(task.critic_updates)(state, images, None, jax.random.PRNGKey(1))
    # a frozen critic and identical real slices: only the fake images can tell the steps apart
    fake_scores = np.asarray(metrics["fake_score"])
    assert fake_scores.shape == (4,)
    assert len(set(fake_scores.tolist())) == 4


@pytest.mark.slow
def test_the_ema_generator_follows_the_recursion_and_is_what_samples_use():
    task = tiny_gan(**{"task.ema_decay": 0.5})
    batch = {"image": jnp.zeros((8, 28, 28, 1)), "label": jnp.zeros(8, jnp.int32)}
    state = init_state(task, jax.random.PRNGKey(0), batch)
    expected = state.ema["params"]
    step = jax.jit(task.train_step)
    for t in range(3):
        state, _ = step(state, batch)
        decay = min(0.5, (1 + t) / (10 + t))
        expected = jax.tree.map(
            lambda e, p, d=decay: d * e + (1 - d) * p, expected, state.generator.params
        )
    # three float32 blends each way (the compiled step's fused ones against numpy's): a few
    # ulps; the wrong decay (e.g. 0.5 instead of (1 + t) / (10 + t)) moves them by > 1e-2
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        state.ema["params"],
        expected,
    )
    noise = jnp.ones((2, 4))
    ema_only = state.replace(generator=state.generator.replace(params=None))
    np.testing.assert_array_equal(task.sample(state, noise), task.sample(ema_only, noise))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"task.loss": "wasserstein"}, "gradient_penalty > 0"),
        ({"task.gradient_penalty": 10.0}, "discriminator_norm"),
        ({"task.r1_penalty": 1.0}, "discriminator_norm"),
        ({"task.critic_steps": 3}, "multiple of task.critic_steps"),
        ({"task.loss": "least_squares"}, "unknown task.loss"),
        ({"task.classifier_workdir": "/nonexistent/run"}, "no finished run"),
        ({"data.preprocess": ("scale_to_unit",)}, "[-1, 1]"),
        ({"task.neighbours": 0}, "task.neighbours 0 must be at least 1"),
        ({"task.eval_samples": 3}, "below task.eval_samples 3"),
    ],
)
def test_bad_gan_settings_are_clear_errors(settings, message):
    with pytest.raises(GenJaxError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_gan(**settings)


@pytest.mark.slow
def test_a_generator_that_does_not_make_the_datas_images_is_a_clear_error():
    task = tiny_gan(**{"model.image_size": 32, "model.channels": 3})  # for CIFAR, on MNIST
    batch = {"image": jnp.zeros((8, 28, 28, 1)), "label": jnp.zeros((8,), jnp.int32)}
    with pytest.raises(
        GenJaxError, match=r"makes \(32, 32, 3\) images but the data are \(28, 28, 1\)"
    ):
        task.init(jax.random.PRNGKey(0), batch)


# ----------------------------------------------------------------------------- metrics
@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(16, 16)) / 4
    return rng.normal(size=(2000, 16)) @ mixing, rng.normal(size=(2000, 16)) @ mixing


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(features):
    a, b = features
    # float64: the matrix square root of cov @ cov leaves ~1e-12 of a trace of ~16
    assert sample_quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = [sample_quality.frechet_distance(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted) and shifted[0] < 0.2 < shifted[1]
    # the mean term alone: shifting by s in all 16 dimensions adds ~16 s^2, plus the cross term
    # with the sample means' own difference (~0.1 of 64 for 2000 samples): within 5%
    assert shifted[3] - shifted[0] == pytest.approx(16 * 4, rel=0.05)


def test_fid_matches_scipy_matrix_square_root(features):
    a, b = features
    b = b * 1.5 + 0.3
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    # both in float64 (another square-root algorithm): ~1e-10 relative apart; a missing factor
    # 2 or a transposed product is off by whole percents
    assert sample_quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_inception_score_is_one_for_uniform_and_the_class_count_for_confident_balanced():
    assert sample_quality.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    confident = np.full((1000, 10), 1e-6)
    confident[np.arange(1000), np.arange(1000) % 10] = 1 - 9e-6
    # exp of the mean KL, which the 1e-6 probabilities keep ~1e-4 below log 10
    assert sample_quality.inception_score(confident) == pytest.approx(10.0, rel=1e-3)
    one_class = np.tile(confident[:1], (1000, 1))  # confident but collapsed: no diversity
    assert sample_quality.inception_score(one_class) == pytest.approx(1.0)


def test_precision_and_recall_of_identical_sets_are_one_and_of_far_sets_zero(features):
    a, _ = features
    assert sample_quality.precision_recall(a, a) == (1.0, 1.0)
    assert sample_quality.precision_recall(a, a + 100.0) == (0.0, 0.0)


def test_a_generator_that_covers_half_the_real_set_has_full_precision_and_half_recall():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.eye(8) * 50, 200, axis=0) + rng.normal(size=(1600, 8))
    half = clusters[:800] + rng.normal(size=(800, 8)) * 0.01  # samples of 4 of the 8 modes
    precision, recall = sample_quality.precision_recall(clusters, half)
    assert precision == 1.0
    # half the modes: 0.5, less the few real points of the covered modes that fall outside the
    # k-NN balls of the samples (~1% with 200 points a mode); a recall of all modes would be 1
    assert recall == pytest.approx(0.5, abs=0.02)


def test_class_histogram_counts_the_most_probable_class():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(sample_quality.class_histogram(probs), [0.5, 0.25, 0.25])


# ----------------------------------------------------------------------------- a mocked run
@pytest.fixture
def classifier_run(tiny_run):
    """The session's tiny classifier run on mocked MNIST, the feature space for GAN metrics."""
    return tiny_run("classifier")


@pytest.mark.slow
def test_a_classifier_run_that_has_not_finished_gives_no_features(classifier_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    copied_run(classifier_run, unfinished)
    config = config_lib.load(unfinished / "config.json")
    config.train.num_steps += 10  # as if it were still training
    config_lib.save(config, unfinished / "config.json")
    tiny_gan(**{"task.classifier_workdir": str(unfinished)})  # loading a GAN run still works
    image, preprocess = (28, 28, 1), config_lib.gan_config().data  # images in [-1, 1]
    with pytest.raises(GenJaxError, match=r"has not finished \(latest checkpoint: step 10 of 20\)"):
        feature_spaces.ClassifierRun(unfinished, preprocess).restore(image)
    _, step = feature_spaces.ClassifierRun(classifier_run, preprocess).restore(image)
    assert step == 10


@pytest.mark.slow
def test_a_mocked_run_with_a_classifier_reports_every_metric_and_conditional_pictures(
    classifier_run, tmp_path, mock_mnist
):
    experiment = write_experiment(
        tmp_path / "cgan.py",
        "gan",
        **{
            "model.num_classes": 10,
            "task.classifier_workdir": str(classifier_run),
            "task.loss": "hinge",
        },
    )
    metrics = train.run(config_lib.load_experiment(experiment), tmp_path / "run")
    for name in ("fid", "inception_score", "precision", "recall", "classes_covered"):
        assert np.isfinite(metrics[name]), name
    # fractions of 64 samples, each a multiple of 1/64: their float sum is 1 to ~1e-16
    assert sum(metrics[f"class_{c}_fraction"] for c in range(10)) == pytest.approx(1.0)
    assert metrics["floor_fid"] >= 0 and 1.0 <= metrics["floor_inception_score"] <= 10.0
    assert metrics["fid_over_floor"] == pytest.approx(metrics["fid"] / metrics["floor_fid"])
    assert load_run(tmp_path / "run").evaluate()["fid"] == metrics["fid"]  # reproducible
    assert list((tmp_path / "run" / "samples").glob("samples_*.png"))
    _, task, _, state = workdir_lib.load_state(tmp_path / "run")
    layout = task.pictures(state, None)["samples"]
    assert layout.shape == (10, 10, 28, 28, 1)  # one row per class
    assert float(layout.min()) >= 0.0 and float(layout.max()) <= 1.0


@pytest.mark.slow
def test_a_run_without_a_classifier_trains_and_says_why_it_reports_no_scores(
    tiny_run, mock_mnist, capsys
):
    run = tiny_run("gan")  # no task.classifier_workdir
    assert checkpoint.latest_step(run / "checkpoints") == 10
    assert logged_metrics(run, 10, "test") == {}
    tasks.build(config_lib.load(run / "config.json"))
    assert "classifier_workdir is empty" in capsys.readouterr().err
    assert list((run / "samples").glob("samples_*.png"))
