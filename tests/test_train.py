"""The training path end to end, in this process, on mocked MNIST."""

import json
import shutil
import signal

import jax
import numpy as np
import pytest

from gen_jax import checkpoint, compiled, models, resume_policy, tasks, train
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.checkpoint import Checkpointer
from gen_jax.errors import GenJaxError, NonFiniteLossError, NonFiniteStateError
from gen_jax.metric_writer import logged_metrics, read_metrics
from gen_jax.run import load_run
from gen_jax.stop_signals import StopSignals
from gen_jax.tasks.base import init_state
from tests.helpers.processes import check_call_mocked_cli
from tests.helpers.runs import assert_trees_equal, copied_run, make_image_folder


def load(path, *overrides):
    config = config_lib.load_experiment(path)
    config_lib.apply_overrides(config, list(overrides))
    return config


@pytest.mark.slow
def test_train_step_from_its_init_lowers_the_loss_on_a_fixed_batch(experiment):
    config = load(
        experiment(), "--config.train.num_steps=30", "--config.optimizer.learning_rate=0.01"
    )
    task = tasks.build(config)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((16, 28, 28, 1), dtype=np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    state = init_state(task, jax.random.PRNGKey(0), batch)
    # init_state's -O2 is only a faster compile: a run starts from the parameters it always did
    assert_trees_equal(state, jax.jit(task.init)(jax.random.PRNGKey(0), batch))
    step = jax.jit(task.train_step)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 30
    assert losses[-1] < 0.5 * losses[0]


def _test_time_scores(experiment, override: str, seed: int):
    """(scores of 4 random images by the classifier with `override`, log p of the plain one, the
    images), both networks at the same initial state."""
    images = np.random.default_rng(seed).random((4, 28, 28, 1), dtype=np.float32)
    plain = tasks.build(load(experiment()))
    state = init_state(plain, jax.random.PRNGKey(0), {"image": images})
    augmented = tasks.build(load(experiment(), override))
    log_p = lambda x: np.asarray(jax.nn.log_softmax(plain.logits(state, x)))
    return np.asarray(augmented.logits(state, images)), log_p, images, (augmented, state)


def test_test_flips_score_the_mean_log_probabilities_of_an_image_and_its_mirror(experiment):
    scores, log_p, images, (flips, state) = _test_time_scores(
        experiment, "--config.task.test_flips=true", seed=0
    )
    # float32 sums of 10 classes: rounding at ~1e-6 of magnitudes around 2
    np.testing.assert_allclose(scores, (log_p(images) + log_p(images[:, :, ::-1])) / 2, atol=1e-5)
    np.testing.assert_allclose(scores, flips.logits(state, images[:, :, ::-1]), atol=1e-5)
    assert np.abs(scores - log_p(images)).max() > 1e-3  # a random network is not symmetric


def test_test_shift_adds_the_two_diagonal_translations_at_a_quarter_each(experiment):
    scores, log_p, images, _ = _test_time_scores(experiment, "--config.task.test_shift=1", seed=1)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    expected = log_p(images) / 2 + (log_p(padded[:, :28, :28]) + log_p(padded[:, 2:, 2:])) / 4
    np.testing.assert_allclose(scores, expected, atol=1e-5)  # float32 rounding, as above
    assert np.abs(scores - log_p(images)).max() > 1e-4  # the translations count


def test_a_run_writes_config_metrics_tensorboard_and_checkpoints(experiment, tmp_path, mock_mnist):
    workdir = tmp_path / "run"
    final = train.run(load(experiment(), "--config.train.eval_every=5"), workdir)
    assert set(final) == {"loss", "accuracy"}
    assert json.loads((workdir / "config.json").read_text())["model"]["hidden"] == 32
    records = read_metrics(workdir)
    assert {"step", "split", "name", "value", "time"} == set(records[0])
    train_losses = [r for r in records if r["split"] == "train" and r["name"] == "loss"]
    assert [r["step"] for r in train_losses] == list(range(1, 11))
    assert [r["step"] for r in records if r["split"] == "test" and r["name"] == "accuracy"] == [
        5,
        10,
    ]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert Checkpointer(workdir / "checkpoints").manager.all_steps() == [5, 10]
    assert load_run(workdir).evaluate() == {"step": 10, **final}


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_call", [1, 5])  # 5: each call scans 5 stacked batches
def test_the_first_call_runs_the_step_compiled_in_the_background_bit_for_bit(
    steps_per_call, experiment, tmp_path, mock_mnist, monkeypatch
):
    config = load(
        experiment(),
        f"--config.train.steps_per_call={steps_per_call}",
        f"--config.train.log_every={steps_per_call}",
    )
    compile_ahead = compiled.TrainCalls.compile_ahead
    ahead = []  # the variants compiled ahead: stacked or not

    def spy(self, stacked, *abstract):
        ahead.append(stacked)
        compile_ahead(self, stacked, *abstract)

    monkeypatch.setattr(compiled.TrainCalls, "compile_ahead", spy)
    train.run(config, tmp_path / "ahead")
    assert ahead == [steps_per_call > 1]
    monkeypatch.setattr(compiled.TrainCalls, "compile_ahead", lambda *args: None)
    train.run(config, tmp_path / "lazy")  # jit compiles at the first call
    records = {run: read_metrics(tmp_path / run) for run in ("ahead", "lazy")}
    losses = {
        run: [r["value"] for r in rs if r["name"] == "loss" and r["split"] == "train"]
        for run, rs in records.items()
    }
    assert len(losses["ahead"]) == 10 // steps_per_call
    assert losses["ahead"] == losses["lazy"]
    first = records["ahead"][0]["step"]
    times = {r["name"]: r["value"] for r in records["ahead"] if r["step"] == first}
    assert 0 < times["first_step_seconds"] < times["startup_seconds"]


@pytest.mark.slow
def test_a_resumed_run_replaces_the_records_written_after_its_checkpoint(
    experiment, tiny_run, tmp_path, mock_mnist
):
    workdir = copied_run(tiny_run(), tmp_path / "run")  # checkpoints at steps 5 and 10
    config = load(experiment())
    shutil.rmtree(workdir / "checkpoints" / "10")  # as if killed after logging steps 6-10
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "split": "te')  # ... in the middle of writing a record
    train_losses = lambda: [
        r for r in read_metrics(workdir) if r["name"] == "loss" and r["split"] == "train"
    ]
    stale = [r for r in train_losses() if r["step"] > 5]
    train.run(config, workdir)
    losses = train_losses()
    assert [r["step"] for r in losses] == list(range(1, 11))  # each step once, in order
    assert [r["value"] for r in losses[5:]] == [r["value"] for r in stale]  # resumed bitwise
    assert min(r["time"] for r in losses[5:]) > max(r["time"] for r in stale)  # written anew
    shutil.rmtree(workdir / "checkpoints")  # as if killed before its first checkpoint
    train.run(config, workdir)
    assert [r["step"] for r in train_losses()] == list(range(1, 11))


@pytest.mark.slow
def test_a_resume_refuses_changes_of_what_is_trained_and_records_the_allowed_ones(
    experiment, tmp_path, mock_mnist, capsys
):
    workdir, path = tmp_path / "run", experiment()
    train.run(load(path, "--config.train.num_steps=4"), workdir)
    train.run(load(path, "--config.train.num_steps=4"), workdir)  # the same settings: no record
    assert not (workdir / "config_changes.jsonl").exists()
    saved = (workdir / "config.json").read_text()
    other = ["--config.train.num_steps=6", "--config.optimizer.learning_rate=0.5"]
    for refused in (["--config.data.batch_size=32"], ["--config.seed=1"], other):
        with pytest.raises(GenJaxError, match=r"(?s)trained to step 4 with other settings.*"):
            train.run(load(path, *refused), workdir)
    assert (workdir / "config.json").read_text() == saved  # refused: nothing changed
    assert Checkpointer(workdir / "checkpoints").all_steps() == [4]
    free = "--config.train.log_every=2"  # when metrics are logged: free, not recorded
    longer = load(path, *other, free)
    train.run(longer, workdir, allow_change=True)
    records = [json.loads(line) for line in (workdir / "config_changes.jsonl").open()]
    old_rate = load(path).optimizer.learning_rate
    assert records == [
        {
            "step": 4,
            "changes": {"optimizer.learning_rate": [old_rate, 0.5], "train.num_steps": [4, 6]},
        }
    ]
    assert "resumes at step 4 with optimizer.learning_rate" in capsys.readouterr().err
    longer.model.num_classes = 10  # the run records what it took from the data
    assert config_lib.load(workdir / "config.json") == longer
    train.run(load(path, "--config.train.num_steps=3"), workdir)  # nothing left to train
    assert "is trained to step 6, so its config.json stays" in capsys.readouterr().err
    assert config_lib.load(workdir / "config.json") == longer
    train.run(load(path, *other, free, "--config.train.num_steps=8"), workdir)  # recorded only
    records = [json.loads(line) for line in (workdir / "config_changes.jsonl").open()]
    assert records[-1] == {"step": 6, "changes": {"train.num_steps": [6, 8]}}


@pytest.mark.slow
def test_the_cli_refuses_a_changed_seed_and_resumes_with_allow_config_change(
    experiment, tmp_path, mock_mnist, capsys
):
    from gen_jax import cli

    path, workdir = experiment(), tmp_path / "run"
    train.run(load(path, "--config.train.num_steps=4"), workdir)
    command = ["train", str(path), "--workdir", str(workdir), "--config.seed=1"]
    assert cli.main(command) == 2
    assert "seed: 0 -> 1" in capsys.readouterr().err
    assert cli.main([*command, "--allow_config_change"]) == 0
    records = [json.loads(line) for line in (workdir / "config_changes.jsonl").open()]
    assert records == [{"step": 4, "changes": {"seed": [0, 1], "train.num_steps": [4, 10]}}]
    capsys.readouterr()
    assert cli.main(["evaluate", str(workdir)]) == 0  # the numbers, and how they were trained
    assert "resumed with other settings: at step 4, seed: 0 -> 1, train.num_steps: 4 -> 10" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_a_moved_image_folder_is_the_same_data_and_another_folder_is_refused(experiment, tmp_path):
    make_image_folder(tmp_path / "a", {"train": 32, "test": 8})
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    make_image_folder(tmp_path / "other", {"train": 32, "test": 8}, seed=1)
    path = experiment(**{"data.cache_dir": str(tmp_path / "cache"), "optimizer.warmup_steps": 0})
    folder = lambda name, steps: load(
        path, f"--config.data.folder={tmp_path / name}", f"--config.train.num_steps={steps}"
    )
    workdir = tmp_path / "run"
    train.run(folder("a", 2), workdir)
    train.run(folder("moved", 4), workdir)  # a path to the same images: free
    records = [json.loads(line) for line in (workdir / "config_changes.jsonl").open()]
    assert records == [{"step": 2, "changes": {"train.num_steps": [2, 4]}}]
    with pytest.raises(GenJaxError, match=r"(?s)would change what is trained:\n  data.folder"):
        train.run(folder("other", 6), workdir)


@pytest.mark.slow
@pytest.mark.parametrize(  # False: a run from before the record, which grain's error tells
    "recorded", [True, pytest.param(False, marks=pytest.mark.slow)]
)
def test_a_resume_that_turns_streaming_on_or_off_takes_the_same_batches_from_the_step(
    experiment, tmp_path, capfd, recorded
):
    make_image_folder(tmp_path / "images", {"train": 48, "test": 8}, shape=(8, 8, 1))
    path = experiment(**{"data.cache_dir": str(tmp_path / "cache"), "optimizer.warmup_steps": 0})
    settings = [
        f"--config.data.folder={tmp_path / 'images'}",
        "--config.train.checkpoint_every=2",
        "--config.train.num_steps=6",
    ]
    run = lambda workdir, stop_at, *more: train.run(load(path, *settings, *more), workdir, stop_at)
    run(tmp_path / "whole", None)
    run(tmp_path / "run", 2)
    if not recorded:
        dataset = json.loads((tmp_path / "run" / "dataset.json").read_text())
        del dataset["iterator"]
        (tmp_path / "run" / "dataset.json").write_text(json.dumps(dataset))
    run(tmp_path / "run", 4, "--config.data.streaming=True")
    run(tmp_path / "run", None)  # and back to memory
    assert "does not fit this pipeline" in capfd.readouterr().err
    assert not (tmp_path / "run" / "damaged_checkpoints").exists()
    losses = lambda workdir: [
        r["value"] for r in read_metrics(workdir) if r["name"] == "loss" and r["split"] == "train"
    ]
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")


def test_every_key_of_the_resume_policy_is_a_config_key_and_none_is_in_both():
    keys = set()
    for family in (config_lib.base_config, config_lib.vae_config, config_lib.gan_config):
        keys |= set(config_lib._flatten(family().to_dict()))
    keys |= set(config_lib._flatten(config_lib.diffusion_config().to_dict()))
    keys |= {f"model.{key}" for name in models.REGISTRY for key in models.options(name)}
    assert set(resume_policy.RECORDED) <= keys and set(resume_policy.FREE) <= keys
    assert not set(resume_policy.RECORDED) & set(resume_policy.FREE)


def test_periods_of_zero_log_evaluate_and_save_only_at_the_end(experiment, tmp_path, mock_mnist):
    zero = [f"--config.train.{key}=0" for key in ("log_every", "eval_every", "checkpoint_every")]
    train.run(load(experiment(), *zero), tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert {r["step"] for r in records if r["name"] in ("loss", "accuracy")} == {10}
    assert Checkpointer(tmp_path / "run" / "checkpoints").manager.all_steps() == [10]


def test_a_finished_run_reruns_without_training_or_evaluating_again(
    experiment, tiny_run, tmp_path, mock_mnist
):
    path = experiment()
    copied_run(tiny_run(), tmp_path / "run")
    first = logged_metrics(tmp_path / "run", 10, "test")
    assert set(first) == {"loss", "accuracy"}
    logged = read_metrics(tmp_path / "run")
    assert train.run(load(path), tmp_path / "run") == first
    assert read_metrics(tmp_path / "run") == logged  # its logged evaluation, not a new one
    assert train.run(load(path), tmp_path / "run", stop_at=5) == first  # nothing to do


def test_checkpoint_that_does_not_fit_the_config_is_refused(
    experiment, tiny_run, tmp_path, mock_mnist
):
    workdir = copied_run(tiny_run(), tmp_path / "run")
    saved_config = (workdir / "config.json").read_text()
    with pytest.raises(
        GenJaxError,
        match=r"(?s)does not fit this config.*"
        r"Dense_0/kernel: checkpoint \(784, 32\), config \(784, 64\)",
    ) as error:
        wider = load(experiment(), "--config.train.num_steps=12", "--config.model.hidden=64")
        train.run(wider, workdir, allow_change=True)
    assert "new --workdir" in str(error.value)
    assert (workdir / "config.json").read_text() == saved_config


DIVERGING = {  # learning rates that make the next step's loss non-finite
    "classifier": ["--config.optimizer.learning_rate=1e30"],
    "gan": [
        "--config.optimizer.generator.learning_rate=1e30",
        "--config.optimizer.discriminator.learning_rate=1e30",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(DIVERGING))
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    experiment, tmp_path, mock_mnist, family
):
    workdir, path = tmp_path / "run", experiment(family=family)
    train.run(load(path, "--config.train.num_steps=5"), workdir)
    _, _, _, good = workdir_lib.load_state(workdir)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step (\d+)") as error:
        train.run(load(path, *DIVERGING[family]), workdir, allow_change=True)
    assert 5 < error.value.step <= 10
    assert Checkpointer(workdir / "checkpoints").latest_step() == 5
    _, _, _, kept = workdir_lib.load_state(workdir)
    assert jax.tree.all(jax.tree.map(np.array_equal, good, kept))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300
@pytest.mark.parametrize("family", sorted(DIVERGING))
def test_an_update_that_overflows_with_a_finite_loss_is_never_checkpointed(
    experiment, tmp_path, mock_mnist, family
):
    workdir, path = tmp_path / "run", experiment(family=family)
    train.run(load(path, "--config.train.num_steps=5"), workdir)
    # inf in float32; the GAN's generator updates last, after both losses are computed
    overflowing = [DIVERGING[family][0].replace("1e30", "1e300")]
    with pytest.raises(NonFiniteStateError, match=r"state at step 6 \(.*params") as error:
        diverging = load(path, *overflowing, "--config.train.checkpoint_every=1")
        train.run(diverging, workdir, allow_change=True)
    assert "The last checkpoint, step 5, was saved before it" in str(error.value)
    assert Checkpointer(workdir / "checkpoints").all_steps() == [5]


@pytest.mark.slow
def test_from_step_resumes_an_older_checkpoint_and_sets_the_newer_aside(
    experiment, tmp_path, mock_mnist, capsys
):
    workdir, path = tmp_path / "run", experiment()
    train.run(load(path), workdir)  # checkpoints at 5 and 10
    _, _, _, at_five = workdir_lib.load_state(workdir, step=5)
    with pytest.raises(GenJaxError, match=r"no checkpoint at step 7 .* holds steps \[5, 10\]"):
        train.run(load(path), workdir, from_step=7)
    with pytest.raises(GenJaxError, match=r"trained to step 5 with other settings"):
        train.run(load(path, "--config.seed=3"), workdir, from_step=5)  # refused: moves nothing
    assert Checkpointer(workdir / "checkpoints").all_steps() == [5, 10]
    train.run(load(path, "--config.train.num_steps=6"), workdir, from_step=5)
    assert f"moved the checkpoint at step 10 to {workdir / 'set_aside_checkpoints' / '10'}" in (
        capsys.readouterr().err
    )
    assert Checkpointer(workdir / "checkpoints").all_steps() == [5, 6]
    assert (workdir / "set_aside_checkpoints" / "10").is_dir()  # kept, never deleted
    resumed = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed[-1] == 6  # trained on from step 5
    _, _, _, state = workdir_lib.load_state(workdir, step=5)
    assert_trees_equal(state, at_five)


def test_a_first_stop_signal_asks_the_loop_to_stop_and_a_second_acts_as_it_did_before():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals() as signals:
        assert not signals.requested(1)
        signal.raise_signal(signal.SIGTERM)  # would have ended pytest without the handler
        assert signals.requested(2) and signals.exit_status() == 128 + signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # Python's own SIGINT handler, called again
            signal.raise_signal(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.slow
def test_reading_a_run_leaves_a_save_in_progress_and_names_the_steps_it_has(
    experiment, tiny_run, tmp_path, mock_mnist
):
    workdir = copied_run(tiny_run(), tmp_path / "run")  # checkpoints at steps 5 and 10
    in_progress = workdir / "checkpoints" / "15.orbax-checkpoint-tmp"
    shutil.copytree(workdir / "checkpoints" / "10", in_progress)  # as if a save were running
    assert load_run(workdir, step=5).step == 5  # what evaluate, sample and notebooks do
    assert in_progress.is_dir()
    assert checkpoint.latest_step(workdir / "checkpoints") == 10  # never the unfinished save
    with pytest.raises(GenJaxError, match=r"no checkpoint at step 7 .* holds steps \[5, 10\]"):
        load_run(workdir, step=7)
    train.run(load(experiment(), "--config.train.num_steps=15"), workdir)  # the run's writer
    assert not in_progress.exists()  # clears what its killed predecessor left unfinished


def test_evaluate_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(GenJaxError, match=r"is .* a gen-jax workdir"):
        load_run(tmp_path).evaluate()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.num_steps=0", "train.num_steps must be a positive integer, not 0"),
        ("train.num_steps=-5", "train.num_steps must be a positive integer, not -5"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints must be a positive integer, not 0"),
        ("train.log_every=-1", "train.log_every must be 0 (only at the end) or a positive"),
        ("data.batch_size=50000000", "data.batch_size=50000000 is larger than the training"),
        ("data.eval_batch_size=2000000000", "data.eval_batch_size=2000000000 needs 5841.3 GiB"),
    ],
)
def test_counts_that_would_train_or_keep_nothing_are_refused_before_anything_runs(
    experiment, tmp_path, mock_mnist, capsys, setting, message
):
    from gen_jax import cli

    path, workdir = experiment(**{"optimizer.warmup_steps": 0}), tmp_path / "run"  # no warm-up
    code = cli.main(["train", str(path), "--workdir", str(workdir), f"--config.{setting}"])
    assert code == 2
    assert f"gen-jax: error: {message}" in capsys.readouterr().err
    assert not workdir.exists()


def test_an_eval_batch_size_below_one_is_refused_by_training_and_by_loading(
    experiment, tmp_path, mock_mnist
):
    """One device here divides every positive size; the slow test below runs 8."""
    config = load(experiment(), "--config.data.eval_batch_size=0")
    message = r"^data.eval_batch_size=0: a batch must be a positive multiple of the 1 devices"
    with pytest.raises(GenJaxError, match=message):
        train.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "saved").mkdir()  # a run whose saved config has it, as evaluate and load_run read
    config_lib.save(config, tmp_path / "saved" / "config.json")
    with pytest.raises(GenJaxError, match=message):
        load_run(tmp_path / "saved")


@pytest.mark.slow
def test_batch_not_divisible_by_the_devices_is_an_error_that_says_so(experiment, tmp_path):
    path = experiment(**{"data.batch_size": 12, "data.eval_batch_size": 20})
    with pytest.raises(AssertionError) as failure:
        check_call_mocked_cli(["train", str(path), "--workdir", str(tmp_path / "run")], devices=8)
    assert (
        "data.batch_size=12, data.eval_batch_size=20: a batch must be a positive multiple of the "
        "8 devices of this run (1 process(es)), which share it equally; choose e.g. "
        "data.batch_size=8, data.eval_batch_size=16"
    ) in str(failure.value)
    assert "Traceback" not in str(failure.value)
