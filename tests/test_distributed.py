"""Guarantees that need fresh processes: device counts, several hosts, exits, kills.

Every run here is the real CLI on mocked MNIST (tests/mocked_cli.py) in its own process.
"""

import json
import shlex
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from PIL import Image

import gen_jax
from gen_jax import checkpoint, cli, parallel
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.metric_writer import logged_metrics, read_metrics
from tests.helpers.distributed import (
    DUMP_PARAMS,
    FIRST_RTOL,
    FIRST_STEPS,
    TRAJECTORY_RTOL,
    assert_trees_close,
    dumped_params,
    finish,
    train_args,
    train_losses,
    two_hosts,
)
from tests.helpers.experiments import DEVICE_RUN_FAMILIES, write_experiment
from tests.helpers.processes import (
    chained,
    check_call_mocked_cli,
    locked_by_another_process,
    mocked_cli,
)
from tests.helpers.runs import REPO, assert_trees_equal

TWO_HOST_STEPS = 60  # long enough that a SIGTERM stops the run before its end
STOP_SECONDS = 20  # how soon a process whose peer was killed must have stopped


@pytest.mark.parametrize(
    "flags",
    [
        ["--coordinator_address", "127.0.0.1:12345"],
        ["--num_processes", "2", "--process_id", "0"],
        ["--coordinator_address", "127.0.0.1:12345", "--num_processes", "2", "--process_id", "2"],
    ],
)
def test_cli_refuses_incomplete_multi_process_flags_before_running(flags, tmp_path, capsys):
    experiment = str(REPO / "experiments/mnist_cnn.py")
    code = cli.main(["train", experiment, "--workdir", str(tmp_path / "w"), *flags])
    assert code == 2
    assert "needs --coordinator_address, --num_processes N and" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_heartbeat_timeout_under_one_second(tmp_path, capsys):
    experiment = str(REPO / "experiments/mnist_cnn.py")
    hosts = ["--coordinator_address", "127.0.0.1:12345", "--num_processes", "2"]
    flags = [*hosts, "--process_id", "0", "--heartbeat_timeout", "0"]
    assert cli.main(["train", experiment, "--workdir", str(tmp_path / "w"), *flags]) == 2
    assert "--heartbeat_timeout must be at least 1 second, not 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, lost",
    [  # the first two as a killed process left them: in a train step, in orbax's barrier
        (jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: [pair.cc] Read error"), True),
        (ValueError("UNKNOWN: Gloo AllGather failed: [pair.cc] Read error"), True),
        (jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory"), False),
        (ValueError("Incompatible shapes for broadcasting: (3,) and (4,)"), False),
    ],
)
def test_only_a_failed_collective_counts_as_a_lost_process(error, lost):
    assert (parallel.lost_peer(error) == str(error)) is lost


@pytest.mark.slow
@pytest.mark.parametrize("family", DEVICE_RUN_FAMILIES)
def test_one_device_and_eight_devices_agree_after_ten_steps(family, device_runs, mock_mnist):
    one_device, eight = device_runs / "one_device" / family, device_runs / "eight_devices" / family
    losses = {run: train_losses(run) for run in (one_device, eight)}
    assert len(losses[one_device]) == 10
    first, trajectory = losses[one_device], losses[eight]
    # relative to the size of the run's losses, not of each one: a WGAN's loss is a difference of
    # critic scores and crosses zero (-0.0074 at step 1), where rounding is that of its terms
    scale = np.abs(first).mean()
    np.testing.assert_allclose(
        first[:FIRST_STEPS], trajectory[:FIRST_STEPS], rtol=FIRST_RTOL, atol=FIRST_RTOL * scale
    )
    rtol = TRAJECTORY_RTOL[family]
    np.testing.assert_allclose(first, trajectory, rtol=rtol, atol=rtol * scale)
    states = [workdir_lib.load_state(run)[3] for run in (one_device, eight)]
    # The diffusion EMA is judged on the scale of the weights it averages: an average of weights
    # that cross zero can cancel (the output layer's bias: 8e-5, its EMA 1e-7), and the weights'
    # rounding (~1e-11 a step, summed by the average) then looks large beside it (1e-3 of the
    # EMA, measured; 1e-6 of the weight).
    scales = states[0].replace(ema=states[0].params) if family == "diffusion" else None
    # params, statistics, Adam moments
    assert_trees_close(*states, rtol=TRAJECTORY_RTOL[family], scales=scales)


@pytest.fixture(scope="module")
def two_host_run(tmp_path_factory):
    """(experiment, workdir) of an uninterrupted two-process run: 60 steps, a checkpoint every
    5, several seconds of training after ~20 s of start: time to kill or stop a process mid-run."""
    root = tmp_path_factory.mktemp("two_hosts")
    experiment = write_experiment(root / "tiny.py", **{"train.num_steps": TWO_HOST_STEPS})
    with two_hosts(experiment, root / "run") as hosts:
        finish(hosts)
    return experiment, root / "run"


@pytest.mark.slow
def test_two_hosts_end_with_identical_params_equal_to_one_process(two_host_run, tmp_path):
    experiment, multi = two_host_run
    single = tmp_path / "single"
    check_call_mocked_cli(train_args(experiment, single, "--stop_at", "10"), env=DUMP_PARAMS)
    first, second = dumped_params(multi, 0, 10), dumped_params(multi, 1, 10)
    assert_trees_equal(first, second)
    # 4 devices in 2 processes against 1: the classifier's reductions in another order
    assert_trees_close(first, dumped_params(single, 0, 10), rtol=TRAJECTORY_RTOL["classifier"])


@pytest.mark.slow
def test_a_two_process_run_resumes_in_one_process_from_its_checkpoint(two_host_run, tmp_path):
    experiment, multi = two_host_run
    workdir = tmp_path / "run"
    shutil.copytree(multi, workdir, ignore=shutil.ignore_patterns("local_params"))
    half = TWO_HOST_STEPS // 2
    resume = train_args(experiment, workdir, "--from_step", str(half))
    check_call_mocked_cli(resume, devices=4, env=DUMP_PARAMS)  # the same 4 devices, 1 process
    starts = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert starts[-1] == half + 1
    # the same global batches on the same mesh; gloo's all-reduce against one process's
    assert_trees_close(
        dumped_params(multi, 0, TWO_HOST_STEPS),
        dumped_params(workdir, 0, TWO_HOST_STEPS),
        rtol=TRAJECTORY_RTOL["classifier"],
    )


@pytest.mark.slow
def test_two_hosts_log_each_step_once_and_write_one_valid_config(two_host_run):
    experiment, workdir = two_host_run
    losses = [r for r in read_metrics(workdir) if r["split"] == "train" and r["name"] == "loss"]
    assert [r["step"] for r in losses] == list(range(1, TWO_HOST_STEPS + 1))
    expected = config_lib.with_absolute_paths(config_lib.load_experiment(experiment))
    expected.model.num_classes = 10  # the run records what it took from the data
    assert config_lib.load(workdir / "config.json") == expected


@pytest.mark.slow
def test_a_workdir_that_another_trainer_holds_stops_both_processes_with_a_message(tmp_path):
    experiment = write_experiment(tmp_path / "tiny.py")
    with (
        locked_by_another_process(tmp_path / "run") as holder,
        two_hosts(experiment, tmp_path / "run") as hosts,
    ):
        outputs = [host.communicate(timeout=120)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [2, 2], "\n".join(outputs)
    assert f"is being trained by pid {holder.pid}" in outputs[0]
    assert "process 0 could not lock" in outputs[1]
    assert not any("Traceback" in output for output in outputs)
    assert not (tmp_path / "run" / "config.json").exists()


def assert_two_hosts_resume_bitwise(experiment, workdir, latest: int, uninterrupted) -> None:
    """Both processes, run again, resume after checkpoint `latest` and end with the params of the
    `uninterrupted` run."""
    with two_hosts(experiment, workdir) as hosts:
        finish(hosts)
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed_at[-1] == latest + 1
    for process in range(2):
        assert_trees_equal(
            dumped_params(uninterrupted, process, TWO_HOST_STEPS),
            dumped_params(workdir, process, TWO_HOST_STEPS),
        )


@pytest.mark.slow
def test_a_killed_host_stops_the_other_with_a_message_and_both_resume_bitwise(
    two_host_run, tmp_path
):
    experiment, uninterrupted = two_host_run
    workdir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def saving():  # a save under way after a finished one: the kill lands during a save
        names = [p.name for p in checkpoints.glob("*")]
        return any(n.isdigit() for n in names) and any("tmp" in n for n in names)

    with two_hosts(experiment, workdir) as (survivor, victim):
        deadline = time.monotonic() + 120
        while not saving():
            assert survivor.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no checkpoint"
            time.sleep(0.002)
        victim.kill()
        killed = time.monotonic()
        output = survivor.communicate(timeout=STOP_SECONDS)[0]
        seconds = time.monotonic() - killed
    # the survivor notices at its next collective, which fails at once on the connection the
    # killed process's exit reset (0.1-0.3 s measured); the bound leaves room for a loaded
    # machine and stays far below jax's 100 s heartbeat timeout, the other way it could learn
    assert seconds < STOP_SECONDS
    assert survivor.returncode == 2, output  # not -6: no abort from jax.distributed's shutdown
    # the save under way stays unfinished (its temporary folder, cleared at the next start)
    assert any("tmp" in p.name for p in checkpoints.glob("*")), "the kill missed the save"
    # from the step folders, not from checkpoint.latest_step, which wrote the message below
    latest = max(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert latest < TWO_HOST_STEPS
    [message] = [line for line in output.splitlines() if line.startswith("gen-jax: error:")]
    assert "process 1 of this 2-process run is gone or stopped answering" in message
    assert f"The last complete checkpoint in {checkpoints} is step {latest} " in message
    assert "Traceback" not in output and "stack trace" not in output
    assert output.rstrip().endswith(shlex.join(["gen-jax", *survivor.args[2:]]))

    assert_two_hosts_resume_bitwise(experiment, workdir, latest, uninterrupted)


def wait_for(ready, processes, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert all(p.poll() is None for p in processes), f"a process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after 120 s"
        time.sleep(0.01)


def assert_stopped_with_a_checkpoint(processes, outputs, statuses, checkpoints, end) -> int:
    """Every process exited with its expected status (128 + a signal's number) after one message
    naming the same saved step, before the run's end; returns that step."""
    assert [p.returncode for p in processes] == statuses, "\n".join(outputs)
    latest = checkpoint.latest_step(checkpoints)
    assert latest < end, "the run ended before the signal stopped it: nothing was tested"
    for output in outputs:
        [message] = [line for line in output.splitlines() if "stopped by a signal" in line]
        assert f"at step {latest}, saved in {checkpoints}." in message
        assert "Traceback" not in output
    return latest


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_under_way_with_a_checkpoint_and_resumes_bitwise(
    tmp_path, mock_mnist
):
    steps = 100
    overrides = {"train.num_steps": steps, "train.checkpoint_every": 0}
    experiment = write_experiment(tmp_path / "tiny.py", **overrides)
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    check_call_mocked_cli(train_args(experiment, reference))
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with mocked_cli(train_args(experiment, workdir), **piped) as process:
        first_step = lambda: (workdir / "metrics.jsonl").exists() and read_metrics(workdir)
        wait_for(first_step, [process], "a first step")  # the training loop is running
        process.send_signal(signal.SIGINT)
        outputs = [process.communicate(timeout=60)[0]]
    checkpoints = workdir / "checkpoints"
    statuses = [128 + signal.SIGINT]
    latest = assert_stopped_with_a_checkpoint([process], outputs, statuses, checkpoints, steps)
    check_call_mocked_cli(train_args(experiment, workdir))
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed_at == [1, latest + 1]
    assert_trees_equal(workdir_lib.load_state(reference)[3], workdir_lib.load_state(workdir)[3])


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent",
    [signal.SIGTERM, signal.SIGINT],  # as a scheduler announces a preemption; Ctrl-C in a shell
    ids=["sigterm", "ctrl_c"],
)
def test_a_signal_to_one_host_stops_both_after_the_same_step_and_they_resume_bitwise(
    two_host_run, tmp_path, sent
):
    experiment, uninterrupted = two_host_run
    workdir = tmp_path / "run"
    with two_hosts(experiment, workdir) as hosts:
        # process 0 writes it once every process has joined jax.distributed
        wait_for((workdir / "config.json").exists, hosts, "config.json")
        hosts[1].send_signal(sent)  # a Ctrl-C is relayed as a SIGTERM to jax's preemption service
        outputs = [host.communicate(timeout=120)[0] for host in hosts]
    checkpoints = workdir / "checkpoints"
    statuses = [128 + signal.SIGTERM, 128 + sent]  # the other process heard of a preemption
    latest = assert_stopped_with_a_checkpoint(hosts, outputs, statuses, checkpoints, TWO_HOST_STEPS)
    assert_two_hosts_resume_bitwise(experiment, workdir, latest, uninterrupted)


@pytest.fixture(scope="module")
def resumed_runs(device_runs, tmp_path_factory):
    """Each family's run of `device_runs`, stopped at step 6 in one process and resumed to the
    end in another (one process for all the stops, one for all the resumes)."""
    root = tmp_path_factory.mktemp("resumed")
    commands = lambda *extra: chained(
        train_args(device_runs / "experiments" / f"{family}.py", root / family, *extra)
        for family in DEVICE_RUN_FAMILIES
    )
    check_call_mocked_cli(commands("--stop_at", "6"), timeout=900)
    check_call_mocked_cli(commands(), timeout=900)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("family", DEVICE_RUN_FAMILIES)
def test_a_run_stopped_halfway_and_resumed_in_a_new_process_is_bitwise_identical(
    family, device_runs, resumed_runs, mock_mnist
):
    resumed = resumed_runs / family
    starts = [r["step"] for r in read_metrics(resumed) if r["name"] == "first_step_seconds"]
    assert starts == [1, 7]  # stopped after step 6, resumed from its checkpoint
    reference = workdir_lib.load_state(device_runs / "one_device" / family)[3]
    assert_trees_equal(reference, workdir_lib.load_state(resumed)[3])
    np.testing.assert_array_equal(
        train_losses(device_runs / "one_device" / family), train_losses(resumed)
    )


@pytest.mark.slow
def test_a_run_trained_with_fsdp_on_eight_devices_resumes_on_two_and_loads_on_one(
    device_runs, tmp_path, mock_mnist
):
    family = "classifier"  # the CLI's path; tests/test_mesh.py compares the families' layouts
    experiment, workdir = device_runs / "experiments" / f"{family}.py", tmp_path / "run"
    small = "--config.mesh.fsdp_min_size=64"  # the tiny model's kernels are split too
    first = train_args(experiment, workdir, "--stop_at", "5", "--config.mesh.fsdp=8", small)
    check_call_mocked_cli(first, devices=8)
    check_call_mocked_cli(train_args(experiment, workdir, "--config.mesh.fsdp=2", small), devices=2)
    starts = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert starts == [1, 6]
    changes = json.loads((workdir / "config_changes.jsonl").read_text())["changes"]
    assert changes == {"mesh.fsdp": [8, 2]}  # recorded, not refused: moving is the point
    reference = device_runs / "one_device" / family
    rtol = TRAJECTORY_RTOL[family]
    np.testing.assert_allclose(train_losses(workdir), train_losses(reference), rtol=rtol)
    run = gen_jax.load_run(workdir)  # as a notebook opens it, in this process: one device
    assert run.mesh.devices.size == 1 and run.config.mesh.fsdp == 2  # as it last trained
    assert_trees_close(workdir_lib.load_state(reference)[3], run.state, rtol=rtol)


@pytest.mark.slow
def test_two_processes_train_with_the_state_sharded_across_them_as_one_device_does(
    device_runs, tmp_path, mock_mnist
):
    experiment, workdir = device_runs / "experiments" / "classifier.py", tmp_path / "run"
    # a 1x4 mesh over 2 processes of 2 devices: each process holds half of every split leaf
    with two_hosts(
        experiment, workdir, "--config.mesh.fsdp=4", "--config.mesh.fsdp_min_size=64"
    ) as hosts:
        finish(hosts)
    reference = train_losses(device_runs / "one_device" / "classifier")
    # measured: 2.7e-7 of the losses' mean apart over the 10 steps (Zen 4)
    rtol = TRAJECTORY_RTOL["classifier"]
    np.testing.assert_allclose(train_losses(workdir), reference, rtol=rtol)


@pytest.mark.slow
def test_sigkill_mid_run_and_mid_save_leaves_a_workdir_that_resumes(
    device_runs, tmp_path, mock_mnist
):
    experiment = device_runs / "experiments" / "classifier.py"
    reference = workdir_lib.load_state(device_runs / "one_device" / "classifier")[3]
    workdir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def finished_steps():  # renamed into place: a tmp directory is unfinished, whatever it holds
        return sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())

    killed_during_save = False
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        every_step = train_args(experiment, workdir, "--config.train.checkpoint_every=1")
        with mocked_cli(every_step, **quiet) as process:
            start = finished_steps()[-1] if finished_steps() else 0
            deadline = time.time() + 120
            while (
                not finished_steps() or finished_steps()[-1] <= start
            ) and process.poll() is None:
                assert time.time() < deadline, "the run made no checkpoint"
                time.sleep(0.01)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
        killed_during_save |= any("tmp" in p.name for p in checkpoints.glob("*"))
        if killed_during_save:
            break
    assert killed_during_save, "no kill landed during a save; the test did not test that case"
    latest = finished_steps()[-1]
    output = check_call_mocked_cli(every_step)
    assert "error" not in output.lower()
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"][-1]
    assert resumed_at == min(latest + 1, 10) or latest == 10
    assert_trees_equal(reference, workdir_lib.load_state(workdir)[3])


# Evaluating the same state on 1 device instead of 8 changes only the order of float32 sums
# (per-device partial sums of the metrics, and of the FID's feature statistics over 64 samples):
# a few ulps of each sum. FID takes a matrix square root of those statistics, which can amplify
# rounding ~100x for ill-conditioned covariances, so 1e-4 relative. A state restored wrongly on
# another device count (a missing leaf, the generator instead of its EMA, a shard of the batch
# statistics) changes these metrics by whole percents.
EVAL_RTOL = {"vae": 1e-5, "gan": 1e-4, "diffusion": 1e-4}
# Precision, recall and class fractions count samples (steps of 1/64 here): a sample whose
# nearest-neighbour distance or top class sits within those ulps of a tie may count the other
# way, so they may differ by one sample. A wrong restore moves them by many.
COUNTED = ("precision", "recall", "fraction", "classes")
EVAL_SAMPLES = 64  # the tiny runs' final evaluation (tests/helpers/experiments.py FAMILIES)
# The grids are the samples rounded to 8-bit levels: a value within those ulps of a level's edge
# rounds the other way, one level off. Measured: none so far; allowed: 1% of the pixels.
GRID_PIXELS_OFF_BY_ONE = 0.01


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vae", "gan", "diffusion"])
def test_a_run_trained_on_eight_devices_loads_on_one_with_the_same_outputs(
    family, device_runs, tmp_path, mock_mnist
):
    workdir = device_runs / "eight_devices" / family
    on_eight = logged_metrics(workdir, 10, "test")  # its final evaluation, on the 8 devices
    if family != "vae":  # scored in a classifier's features, so there are scores to compare
        assert {"fid", "inception_score", "precision", "recall"} <= set(on_eight)
    run = gen_jax.load_run(workdir)  # this process: one CPU device
    assert len(run.mesh.devices.flat) == 1
    on_one = run.evaluate()
    assert set(on_one) == {"step", *on_eight}
    for name, value in on_eight.items():
        if any(word in name for word in COUNTED):  # one sample either way
            assert abs(on_one[name] - value) <= 1 / EVAL_SAMPLES + 1e-9, name
        else:
            assert on_one[name] == pytest.approx(value, rel=EVAL_RTOL[family], abs=1e-6), name
    cli.main(["sample", str(workdir), "--num", "16", "--out", str(tmp_path / "one.png")])
    grid_on_eight = np.asarray(Image.open(device_runs / "eight_devices" / f"{family}.png"))
    off = np.abs(grid_on_eight.astype(int) - np.asarray(Image.open(tmp_path / "one.png")))
    assert off.max() <= 1 and (off > 0).mean() <= GRID_PIXELS_OFF_BY_ONE
