"""The streamed pipeline (a split read from disk by grain workers) trains exactly as the
in-memory one: the same batches and augmentation, bitwise; resumed; on 8 devices and 2 processes
as the in-memory path is (tests/helpers/distributed.py's tolerances)."""

import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import data, train
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import logged_metrics, read_metrics
from gen_jax.run import load_run
from tests.helpers.distributed import (
    TRAJECTORY_RTOL,
    assert_trees_close,
    dumped_params,
    finish,
    train_args,
    train_losses,
    two_hosts,
)
from tests.helpers.experiments import write_experiment
from tests.helpers.processes import check_call_mocked_cli
from tests.helpers.runs import assert_trees_equal, make_image_folder
from tests.mocked_cli import THEN

STEPS = 10


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory):
    """An experiment on a tiny color image folder (random crop, flip, normalize), and its run
    held in memory, trained here in one go."""
    root = tmp_path_factory.mktemp("streaming")
    make_image_folder(root / "images", {"train": 96, "test": 32}, shape=(12, 12, 3))
    settings = {
        "data.folder": str(root / "images"),
        "data.cache_dir": str(root / "cache"),
        "data.preprocess": ("random_crop", "horizontal_flip", "normalize"),
        "data.mean": (0.5, 0.5, 0.5),
        "data.std": (0.29, 0.29, 0.29),
        "data.crop_padding": 2,
        "data.batch_size": 16,
        "data.eval_batch_size": 16,
        "train.num_steps": STEPS,
        "train.checkpoint_every": 5,
    }
    experiment = write_experiment(root / "folder.py", **settings)
    train.run(config_lib.load_experiment(experiment), root / "in_memory")
    return experiment, root


def streamed(experiment, *overrides):
    config = config_lib.load_experiment(experiment)
    config_lib.apply_overrides(config, ["--config.data.streaming=true", *overrides])
    return config


@pytest.mark.slow
def test_streamed_batches_train_bitwise_as_in_memory_and_resume_exactly(folder_runs):
    experiment, root = folder_runs
    workdir = root / "streamed"
    train.run(streamed(experiment), workdir, stop_at=5)
    train.run(streamed(experiment), workdir)  # a new iterator, restored from the checkpoint
    in_memory = root / "in_memory"
    resumed = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed == [1, 6]  # stopped at 5, resumed in a new iterator
    # bitwise: the in-memory run preprocesses in the compiled step, the streamed one in numpy
    # in grain's workers; the steps round once each in float32 either way (no fused multiply-
    # add; see test_a_split_kept_on_device_trains_exactly_as_host_batches for what would break)
    np.testing.assert_array_equal(train_losses(workdir), train_losses(in_memory))
    assert_trees_equal(load_run(workdir).state, load_run(in_memory).state)
    # and the evaluation, streamed from disk too, logged the same numbers
    assert logged_metrics(workdir, STEPS, "test") == logged_metrics(in_memory, STEPS, "test")
    assert load_run(workdir).dataset["streamed"] and not load_run(in_memory).dataset["streamed"]
    assert load_run(in_memory).class_names == ("cat", "dog", "owl")


@pytest.mark.slow
def test_a_loaded_run_preprocesses_pictures_of_any_size_and_channels_as_its_data(folder_runs):
    _, root = folder_runs
    run = load_run(root / "in_memory")
    raw = data.open_split(run.config.data, "test").read(np.arange(4))["image"]
    np.testing.assert_array_equal(run.preprocess(raw), run.images("test")["image"][:4])
    gray = np.zeros((2, 30, 20), dtype=np.uint8)  # tall: its centre square is rows 5-24,
    gray[:, 3:27] = 200  # white with a margin for the resize's blending; black top and bottom
    fitted = run.preprocess(gray)  # gray to RGB, shorter side 20 -> 12, centre crop
    assert fitted.shape == (2, 12, 12, 3)
    np.testing.assert_array_equal(fitted[..., 0], fitted[..., 2])  # gray: equal channels
    # all of the crop is the white centre: a squashing resize or a corner crop shows black
    white = run.preprocess(np.full((2, 12, 12), 200, np.uint8))
    np.testing.assert_array_equal(fitted, white)
    with pytest.raises(GenJaxError, match=r"preprocess takes uint8 images"):
        run.preprocess(gray.astype(np.float32))


@pytest.mark.slow
def test_streamed_on_eight_devices_and_two_processes_as_in_memory_on_one(folder_runs):
    experiment, root = folder_runs
    eight, eight_in_memory = root / "eight_devices", root / "eight_devices_in_memory"
    streamed_run = train_args(experiment, eight, "--config.data.streaming=true")
    check_call_mocked_cli([*train_args(experiment, eight_in_memory), THEN, *streamed_run], 8)
    # on the same 8 devices the same program runs on the same batches: bitwise
    np.testing.assert_array_equal(train_losses(eight), train_losses(eight_in_memory))
    assert_trees_equal(load_run(eight).state, load_run(eight_in_memory).state)
    one = train_losses(root / "in_memory")
    # the 1-vs-2-process bound of test_distributed, whose reasons stand there: the classifier's
    # reductions run in another order over 2 processes, whatever feeds the batches
    rtol = TRAJECTORY_RTOL["classifier"]
    with two_hosts(experiment, root / "two_processes", "--config.data.streaming=true") as hosts:
        finish(hosts)
    first, second = (dumped_params(root / "two_processes", p, STEPS) for p in range(2))
    assert_trees_equal(first, second)
    np.testing.assert_allclose(train_losses(root / "two_processes"), one, rtol=rtol)
    two = load_run(root / "two_processes").state
    assert_trees_close(load_run(root / "in_memory").state, two, rtol=rtol)


def test_a_split_over_the_memory_budget_or_asked_to_stream_is_streamed(mock_mnist):
    config = config_lib.base_config().data
    source = data.open_split(config, "train")
    assert data.fits_in_memory(config, source)  # mocked MNIST: a few hundred KB
    config.memory_budget = 1_000
    assert not data.fits_in_memory(config, source)
    config.memory_budget, config.streaming = 2**30, True
    assert not data.fits_in_memory(config, source)
