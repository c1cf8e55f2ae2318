"""The speed options change how fast a run goes, never what it computes: split batches,
several steps per compiled call, no retracing, and bfloat16 compute."""

import jax
import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import tasks, train
from gen_jax.checkpoint import Checkpointer
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import read_metrics
from gen_jax.run import load_run
from gen_jax.tasks.classifier import ClassifierTask


def load(path, *overrides, model: dict | None = None):
    """The experiment at `path` with overrides; `model` replaces its whole model section."""
    config = config_lib.load_experiment(path)
    if model:
        config.model = config_lib.ml_collections.ConfigDict(model)
    config_lib.apply_overrides(config, list(overrides))
    return config


PLAIN_CNN = {"name": "cnn"}  # no batch norm or dropout, which split batches refuse
IWAE = ["--config.task.objective=iwae", "--config.task.kl_warmup_steps=0"]  # no KL term to warm


def fake_batch(size: int = 16) -> dict:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((size, 28, 28, 1), dtype=np.float32),
        "label": rng.integers(0, 10, size).astype(np.int32),
    }


def train_two_steps(config) -> tuple:
    task = tasks.build(config)
    state = task.init(jax.random.PRNGKey(0), fake_batch())
    step = jax.jit(task.train_step)
    for _ in range(2):
        state, metrics = step(state, fake_batch())
    return state.params, metrics


@pytest.mark.parametrize(
    "family, overrides, model",
    [
        ("classifier", ["--config.task.max_shift=2"], PLAIN_CNN),
        ("vae", [], None),
        ("vae", [*IWAE, "--config.task.train_samples=3"], None),
    ],
)
def test_split_batches_give_the_whole_batch_step(experiment, family, overrides, model):
    path = experiment(family=family)
    whole = train_two_steps(load(path, *overrides, model=model))
    split = train_two_steps(load(path, *overrides, "--config.train.batch_splits=4", model=model))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_split_batches_are_refused_where_they_would_change_the_step(experiment, tmp_path):
    batch_norm = load(experiment(), "--config.train.batch_splits=2")  # bn_cnn
    with pytest.raises(GenJaxError, match="batch norm"):
        train_two_steps(batch_norm)
    with pytest.raises(GenJaxError, match="set it to 1"):
        tasks.build(load(experiment(family="gan"), "--config.train.batch_splits=2"))
    with pytest.raises(GenJaxError, match="does not divide the 16 examples"):
        train.run(load(experiment(), "--config.train.batch_splits=3"), tmp_path / "run")
    with pytest.raises(GenJaxError, match="positive integer"):
        train.run(load(experiment(), "--config.train.steps_per_call=0"), tmp_path / "run")


@pytest.mark.parametrize("family", ["classifier", "vae"])
def test_several_steps_per_call_train_the_same_run(experiment, tmp_path, mock_mnist, family):
    """Steps 1-4 and 5-8 go as scans of 4, steps 9 and 10 singly (before a checkpoint)."""
    path = experiment(family=family)
    settings = ["--config.train.log_every=5", "--config.train.eval_every=5"]
    runs = {}
    for calls in (1, 4):
        workdir = tmp_path / f"calls_{calls}"
        train.run(load(path, *settings, f"--config.train.steps_per_call={calls}"), workdir)
        losses = [r["value"] for r in read_metrics(workdir) if r["name"] == "loss"]
        runs[calls] = load_run(workdir).state.params, losses
    np.testing.assert_allclose(runs[4][1], runs[1][1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(runs[1][0]), jax.tree.leaves(runs[4][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_stop_ends_after_the_call_that_reaches_it_so_the_resumed_run_is_the_same(
    experiment, tmp_path, mock_mnist
):
    """Calls: steps 1-4, 5-8, 9, 10 (events only at the end), with or without the stop at 6."""
    settings = {f"train.{key}": 0 for key in ("log_every", "eval_every", "checkpoint_every")}
    path = experiment(**settings, **{"train.steps_per_call": 4})
    train.run(load(path), tmp_path / "straight")
    train.run(load(path), tmp_path / "stopped", stop_at=6)
    assert Checkpointer(tmp_path / "stopped" / "checkpoints").latest_step() == 8
    train.run(load(path), tmp_path / "stopped")
    straight, resumed = (load_run(tmp_path / name).state for name in ("straight", "stopped"))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("calls", [1, 4])
def test_the_train_step_is_traced_once_per_run(experiment, tmp_path, mock_mnist, calls):
    traces = []
    original = ClassifierTask.train_step

    def counted(self, state, batch):
        traces.append(batch["image"].shape)
        return original(self, state, batch)

    config = load(
        experiment(),
        "--config.train.num_steps=24",
        "--config.train.log_every=4",
        "--config.train.checkpoint_every=12",
        f"--config.train.steps_per_call={calls}",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClassifierTask, "train_step", counted)
        train.run(config, tmp_path / "run")
    assert traces == [(16, 28, 28, 1)]


def test_bfloat16_compute_trains_with_float32_parameters(experiment):
    """Mixed precision (for GPUs and TPUs) trains as well as float32 on a fixed batch."""
    batch, final_losses = fake_batch(), {}
    for dtype in ("float32", "bfloat16"):
        overrides = ["--config.optimizer.learning_rate=0.003", "--config.train.num_steps=30"]
        config = load(experiment(), *overrides, model={**PLAIN_CNN, "dtype": dtype})
        task = tasks.build(config)
        state = task.init(jax.random.PRNGKey(0), batch)
        assert ("bf16" in str(jax.make_jaxpr(task.train_step)(state, batch))) == (
            dtype == "bfloat16"
        )
        step, losses = jax.jit(task.train_step), []
        for _ in range(30):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        assert losses[-1] < 0.8 * losses[0]  # random labels: memorised slowly
        assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype("float32")}
        final_losses[dtype] = losses[-1]
    # bfloat16 keeps 8 bits of mantissa (0.4% per operation): 30 steps of it land within a few
    # percent of float32's loss; a broken cast (e.g. float32 params lost) would not train at all
    assert final_losses["bfloat16"] == pytest.approx(final_losses["float32"], rel=0.05)


@pytest.mark.parametrize("family", ["classifier", "vae"])
def test_a_split_kept_on_device_trains_exactly_as_host_batches(
    experiment, tiny_run, tmp_path, mock_mnist, family
):
    on_device = load_run(tiny_run(family)).state.params  # data.on_device is the default
    assert config_lib.load(tiny_run(family) / "config.json").data.on_device
    train.run(load(experiment(family=family), "--config.data.on_device=False"), tmp_path / "run")
    on_host = load_run(tmp_path / "run").state.params
    for a, b in zip(jax.tree.leaves(on_device), jax.tree.leaves(on_host), strict=True):
        np.testing.assert_array_equal(a, b)
