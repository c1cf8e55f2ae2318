"""The speed options change how fast a run goes, never what it computes: split batches,
several steps per compiled call, no retracing, and bfloat16 compute; and gen_jax's XLA setting
for CPU convolutions applies when it can, and only then."""

import importlib.metadata
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import host, tasks, train
from gen_jax.checkpoint import Checkpointer
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import read_metrics
from gen_jax.run import load_run
from gen_jax.tasks.base import BatchSplits, init_state, split_value_and_grad
from gen_jax.tasks.classifier import ClassifierTask
from tests.helpers.runs import assert_trees_equal


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


def train_steps(config, count: int = 3) -> tuple:
    """`count` compiled train steps on one fixed batch: the state and the metrics of each step."""
    task = tasks.build(config)
    state = init_state(task, jax.random.PRNGKey(0), fake_batch())
    step, history = jax.jit(task.train_step), []
    for _ in range(count):
        state, metrics = step(state, fake_batch())
        history.append(metrics)
    return state, jax.tree.map(lambda *values: np.stack(values), *history)


def assert_same_training(expected, actual, learning_rate: float) -> None:
    """Two train states that took the same steps agree up to float32 rounding.

    Params: within a tenth of one Adam step. Adam moves each weight by about the learning rate
    per step whatever its gradient's size, so a weight whose gradient is a cancelling sum near
    its rounding error may move a little differently (measured: 0.006 lr after 3 split-batch
    steps, 1e-4 lr for scanned steps); a slice left out or a wrong batch moves most weights
    differently, by ~lr a step (measured: 5.7 lr). Every other float leaf (Adam's mu and nu,
    batch statistics): within 1e-4 of its largest value, relative to each leaf's own scale
    because nu ~ g^2 is ~1e-6 here: rounding moves them ~1e-6 of that (measured), while a
    gradient of the wrong scale (slices summed, not averaged) multiplies mu by 4 and nu by 16,
    which Adam's scale-free update would hide from the params. Integers (step, keys, counts):
    equal.
    """
    for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(actual.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=learning_rate / 10)
    rest = lambda state: jax.tree.leaves(state.replace(params=None))
    for a, b in zip(rest(expected), rest(actual), strict=True):
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
        else:
            np.testing.assert_array_equal(b, a)


ACCUMULATED = ["--config.train.accumulate_gradients=true"]  # the slices one after another


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, overrides, model",
    [
        ("classifier", ["--config.task.max_shift=2"], PLAIN_CNN),
        ("classifier", ["--config.task.max_shift=2", *ACCUMULATED], PLAIN_CNN),
        ("vae", [], None),
        ("vae", [*IWAE, "--config.task.train_samples=3"], None),
    ],
)
def test_split_batches_give_the_whole_batch_step(experiment, family, overrides, model):
    """Three real Adam updates (no warm-up: its first step has a learning rate of 0)."""
    path = experiment(family=family)
    settings = [*overrides, "--config.optimizer.warmup_steps=0"]
    config = load(path, *settings, model=model)
    whole_state, whole = train_steps(config)
    split_config = load(path, *settings, "--config.train.batch_splits=4", model=model)
    split_state, split = train_steps(split_config)
    assert_same_training(whole_state, split_state, config.optimizer.learning_rate)
    # Each step's loss, its terms (~2 nats for the classifier, ~550 for the VAE) and gradient
    # norm: means over 16 examples that the split sums in another order, a few float32 ulps
    # apart (measured: 2e-7 relative at most); a wrong mean of the slices changes them by 1e-3
    # or more (a slice left out), the gradient norm by 3x (slices summed).
    for name in whole:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, err_msg=name)


def test_split_batches_are_refused_where_they_would_change_the_step(experiment, tmp_path):
    batch_norm = load(experiment(), "--config.train.batch_splits=2")  # bn_cnn
    with pytest.raises(GenJaxError, match="batch norm"):
        train_steps(batch_norm)
    with pytest.raises(GenJaxError, match="set it to 1"):
        tasks.build(load(experiment(family="gan"), "--config.train.batch_splits=2"))
    with pytest.raises(GenJaxError, match="does not divide the 16 examples"):
        train.run(load(experiment(), "--config.train.batch_splits=3"), tmp_path / "run")
    with pytest.raises(GenJaxError, match="positive integer"):
        train.run(load(experiment(), "--config.train.steps_per_call=0"), tmp_path / "run")
    with pytest.raises(GenJaxError, match=r"but train\.batch_splits is 1; set it to the number"):
        train.run(load(experiment(), *ACCUMULATED), tmp_path / "run")


@pytest.mark.parametrize("accumulate", [False, True])
def test_each_slice_of_a_split_batch_draws_with_its_own_key(accumulate):
    """Dropout's key, folded with the slice: slices that shared it would drop the same rows of
    each slice (a mask repeated, not a mask of the whole batch)."""

    def loss_fn(params, rows, rng):  # the key's bits as the aux, which the split averages
        return jnp.mean(params * rows), jax.random.key_data(rng).astype(jnp.float32)

    rng, rows = jax.random.PRNGKey(7), jnp.arange(8.0)
    split = split_value_and_grad(loss_fn, BatchSplits(4, accumulate))
    (_, keys), _ = jax.jit(split)(jnp.ones(()), rows, rng=rng)
    folded = [jax.random.key_data(jax.random.fold_in(rng, i)) for i in range(4)]
    np.testing.assert_array_equal(keys, np.mean(np.asarray(folded, np.float32), axis=0))
    (_, whole), _ = split_value_and_grad(loss_fn, BatchSplits())(jnp.ones(()), rows, rng=rng)
    np.testing.assert_array_equal(whole, jax.random.key_data(rng))  # one slice: the key as given


@pytest.mark.slow
@pytest.mark.parametrize("family", ["classifier", "vae"])
def test_several_steps_per_call_train_the_same_run(experiment, tmp_path, mock_mnist, family):
    """Steps 1-4 and 6-9 go as scans of 4, steps 5 and 10 singly (each before a log, an
    evaluation and a checkpoint)."""
    path = experiment(family=family)
    settings = ["--config.train.log_every=5", "--config.train.eval_every=5"]
    runs = {}
    for calls in (1, 4):
        workdir = tmp_path / f"calls_{calls}"
        train.run(load(path, *settings, f"--config.train.steps_per_call={calls}"), workdir)
        losses = [r["value"] for r in read_metrics(workdir) if r["name"] == "loss"]
        runs[calls] = load_run(workdir).state, losses
    # Train losses (5-step means; the classifier's test losses too), ~2.5 nats (classifier) and
    # ~570 (VAE), of the same steps compiled inside a scan or alone, which XLA may fuse and round
    # differently (measured: 1 ulp); rtol 1e-5, with atol 1e-6 for a loss near zero (a memorised
    # batch). A scan that trained each of its steps on the call's first batch moved them by
    # 6e-4 to 6e-2 relative.
    np.testing.assert_allclose(runs[4][1], runs[1][1], rtol=1e-5, atol=1e-6)
    assert_same_training(runs[1][0], runs[4][0], load(path).optimizer.learning_rate)


# airbench's optimizer: its batch norm biases' own rate makes a partitioned optimizer state,
# wrapped in lookahead's (slow weights synced at steps 3, 6, 9 and 10)
AIRBENCH_SGD = {
    "optimizer.name": "sgd",
    "optimizer.nesterov": True,
    "optimizer.weight_decay": 1e-3,
    "optimizer.bias_lr_scale": 8.0,
    "optimizer.lookahead_every": 3,
}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [{}, AIRBENCH_SGD], ids=["adam", "airbench_sgd"])
def test_a_stop_ends_after_the_call_that_reaches_it_so_the_resumed_run_is_the_same(
    experiment, tmp_path, mock_mnist, optimizer
):
    """Calls: steps 1-4, 5-8, 9, 10 (events only at the end), with or without the stop at 6."""
    settings = {f"train.{key}": 0 for key in ("log_every", "eval_every", "checkpoint_every")}
    path = experiment(**settings, **optimizer, **{"train.steps_per_call": 4})
    train.run(load(path), tmp_path / "straight")
    train.run(load(path), tmp_path / "stopped", stop_at=6)
    assert Checkpointer(tmp_path / "stopped" / "checkpoints").latest_step() == 8
    train.run(load(path), tmp_path / "stopped")
    straight, resumed = (load_run(tmp_path / name).state for name in ("straight", "stopped"))
    assert_trees_equal(straight, resumed)


@pytest.mark.slow
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


@pytest.mark.slow
def test_bfloat16_compute_trains_with_float32_parameters(experiment):
    """Mixed precision (for GPUs and TPUs) trains as well as float32 on a fixed batch."""
    batch, final_losses = fake_batch(), {}
    for dtype in ("float32", "bfloat16"):
        overrides = ["--config.optimizer.learning_rate=0.003", "--config.train.num_steps=30"]
        config = load(experiment(), *overrides, model={**PLAIN_CNN, "dtype": dtype})
        task = tasks.build(config)
        state = init_state(task, jax.random.PRNGKey(0), batch)
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


@pytest.mark.slow
@pytest.mark.parametrize("family", ["classifier", "vae"])
def test_a_split_kept_on_device_trains_exactly_as_host_batches(
    experiment, tiny_run, tmp_path, mock_mnist, family
):
    on_device = load_run(tiny_run(family)).state.params  # data.on_device is the default
    assert config_lib.load(tiny_run(family) / "config.json").data.on_device
    train.run(load(experiment(family=family), "--config.data.on_device=False"), tmp_path / "run")
    on_host = load_run(tmp_path / "run").state.params
    # Bitwise, though one preprocesses in the compiled step and the other in numpy on the host:
    # the steps are elementwise scalings, shifts, flips and crops, each rounded once in float32
    # either way (no fused multiply-add: XLA:CPU does not contract a * x + b here). A compiler
    # that fused them, or a preprocessing step with a reduction, would differ in the last ulp
    # and need a tolerance.
    assert_trees_equal(on_device, on_host)


CONVOLUTION_HLO = """
import os, sys, warnings
import jax, jax.numpy as jnp
if sys.argv[1] == "after_jax":
    jnp.zeros(1).block_until_ready()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import gen_jax
nhwc = ("NHWC", "HWIO", "NHWC")  # as flax's nn.Conv
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc)
hlo = jax.jit(conv).lower(jnp.zeros((8, 14, 14, 32)), jnp.zeros((3, 3, 32, 64))).compile().as_text()
late = any("import gen_jax first" in str(w.message) for w in caught)
print(os.environ.get("XLA_FLAGS", ""), "|", "ynn_fusion" in hlo, late)
"""


def convolution_hlo(case: str, xla_flags: str | None = None) -> str:
    """A fresh Python (XLA reads its flags once) that imports gen_jax, `first` or `after_jax`
    ran a computation, and compiles a convolution: its XLA_FLAGS, whether YNNPACK runs the
    convolution and whether gen_jax warned that it came too late."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    command = [sys.executable, "-c", CONVOLUTION_HLO, case]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.slow
@pytest.mark.skipif(
    not importlib.metadata.version("jaxlib").startswith(host.MEASURED_JAXLIB),
    reason="gen_jax leaves other jaxlib versions' XLA flags as they are",
)
def test_importing_gen_jax_keeps_convolutions_out_of_ynnpack_unless_told_otherwise():
    assert convolution_hlo("first") == f"{host.GEN_JAX_YNN_FUSIONS} | False False"
    user = f"--xla_force_host_platform_device_count=2 {host.XLA_YNN_FUSIONS}"
    assert convolution_hlo("first", user) == f"{user} | True False"  # the user's setting stands
    assert convolution_hlo("after_jax") == "| True True"  # too late: XLA's own, and a warning
