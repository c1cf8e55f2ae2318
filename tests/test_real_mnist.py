"""The baseline experiment learns on the real MNIST in ../shared/data (skipped where absent)."""

import pytest

from gen_jax import config as config_lib
from gen_jax import data, train
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_three_hundred_steps_of_the_baseline_reach_95_percent(real_data_dir, tmp_path):
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
    metrics = train.run(config, tmp_path / "run")
    assert metrics["accuracy"] > 0.95
    assert train.evaluate_workdir(tmp_path / "run")["accuracy"] == metrics["accuracy"]
