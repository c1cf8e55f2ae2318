"""Short runs of each family learn on the real MNIST in ../shared/data (skipped where absent)."""

import pytest

from gen_jax import config as config_lib
from gen_jax import data, train
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier_run(real_data_dir, tmp_path_factory):
    """300 steps of the baseline CNN on real MNIST: tested itself, and the GAN tests' features."""
    config = config_lib.load_experiment(REPO / "experiments/mnist_cnn.py")
    config_lib.apply_overrides(
        config,
        [
            f"--config.data.data_dir={real_data_dir}",
            "--config.train.num_steps=300",
            "--config.train.checkpoint_every=300",
        ],
    )
    assert len(data.load_split(config.data, "test")["label"]) == 10_000  # real, not mocked
    workdir = tmp_path_factory.mktemp("classifier") / "run"
    return train.run(config, workdir), workdir


def test_three_hundred_steps_of_the_baseline_reach_95_percent(classifier_run):
    metrics, workdir = classifier_run
    assert metrics["accuracy"] > 0.95
    assert train.evaluate_workdir(workdir)["accuracy"] == metrics["accuracy"]


def test_a_short_mlp_vae_run_lowers_the_test_negative_elbo_far_below_its_start(
    real_data_dir, tmp_path
):
    config = config_lib.load_experiment(REPO / "experiments/mnist_vae_mlp.py")
    quick = [
        f"--config.data.data_dir={real_data_dir}",
        "--config.task.eval_samples=10",
        "--config.task.final_eval_samples=10",
        "--config.task.eval_sample_chunk=10",
    ]
    config_lib.apply_overrides(config, [*quick, "--config.train.num_steps=1"])
    at_start = train.run(config, tmp_path / "run")  # evaluated after one step
    config.train.num_steps = 300  # constant learning rate: continuing is training on
    after = train.run(config, tmp_path / "run")
    assert at_start["neg_elbo"] > 400
    assert after["neg_elbo"] < at_start["neg_elbo"] - 250
    assert after["nll"] <= after["neg_elbo"]


def test_a_short_dcgan_run_improves_its_fid_far_beyond_its_start(
    real_data_dir, classifier_run, tmp_path
):
    _, classifier_workdir = classifier_run
    config = config_lib.load_experiment(REPO / "experiments/mnist_dcgan.py")
    quick = [
        f"--config.data.data_dir={real_data_dir}",
        f"--config.task.classifier_workdir={classifier_workdir}",
        "--config.task.eval_samples=2000",
    ]
    config_lib.apply_overrides(config, [*quick, "--config.train.num_steps=1"])
    at_start = train.run(config, tmp_path / "run")  # evaluated after one step
    config.train.num_steps = 300  # constant learning rates: continuing is training on
    after = train.run(config, tmp_path / "run")
    assert after["fid"] < at_start["fid"] / 3
    assert after["inception_score"] > at_start["inception_score"]
    assert after["floor_fid"] == at_start["floor_fid"]  # real vs real: does not train
