"""`gen-jax reproduce`: runs experiments, checks their declared numbers, writes one table."""

import functools
import json
import re

import jax
import numpy as np
import pytest

from gen_jax import cli, data, parallel, provenance, reproduce, sample_quality, tasks, train
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.errors import GenJaxError
from tests.helpers.experiments import QUICK_FAMILIES, write_experiment
from tests.helpers.runs import REPO


def test_the_table_goes_between_the_markers_and_keeps_the_text_around_it(tmp_path):
    path = tmp_path / "RESULTS.md"
    reproduce.write_table("first table\n", path)
    assert path.read_text() == f"{reproduce.BEGIN}\nfirst table\n{reproduce.END}\n"
    path.write_text("# Results\n\n" + path.read_text() + "\nnotes by hand\n")
    reproduce.write_table("second table\n", path)
    text = path.read_text()
    assert text.startswith("# Results\n\n") and text.endswith("notes by hand\n")
    assert "second table" in text and "first table" not in text


BROKEN_MARKERS = {  # RESULTS.md after a hand edit or a merge
    "the end marker lost": f"# Results\n{reproduce.BEGIN}\n| a | 1 |\n\n## Later\n| x | y |\n",
    "a second table appended": (
        f"{reproduce.BEGIN}\n| a | 1 |\n\ntext\n{reproduce.BEGIN}\n| b | 2 |\n{reproduce.END}\n"
    ),
    "the end first": f"{reproduce.END}\ntext\n{reproduce.BEGIN}\n| a | 1 |\n",
}


@pytest.mark.parametrize("broken", BROKEN_MARKERS)
def test_markers_other_than_one_begin_and_one_end_are_an_error_that_changes_nothing(
    tmp_path, monkeypatch, broken
):
    path = tmp_path / "RESULTS.md"
    path.write_text(BROKEN_MARKERS[broken])
    for call in (lambda: reproduce.table_in(path), lambda: reproduce.write_table("| c |\n", path)):
        with pytest.raises(GenJaxError, match="exactly one line"):
            call()
    # `gen-jax reproduce` refuses before it trains anything
    monkeypatch.setattr(reproduce, "reproduce", lambda *args: pytest.fail("it trained"))
    with pytest.raises(GenJaxError, match="Nothing was run or changed"):
        reproduce.main(["mnist_cnn"], False, tmp_path / "runs", path, REPO / "experiments")
    assert path.read_text() == BROKEN_MARKERS[broken]


def test_a_call_replaces_its_experiments_rows_and_keeps_the_others_with_their_runs(monkeypatch):
    legacy = (  # a table from before the run column: its first line describes its one run
        "`gen-jax reproduce`, full recipes; 2026-11-23 10:44 UTC; jax 0.10.2; AMD EPYC.\n\n"
        "| experiment | metric | value | expected | result | training time |\n"
        "|---|---|---|---|---|---|\n"
        "| cnn | accuracy | 0.99 | 0.99 ± 0.01 | pass | 3.0 min |\n"
        "| gan | fid | 9 | 9 ± 1 | pass | 50.0 min |\n"
        "| gan | inception_score | 9 | 9 ± 1 | pass | 50.0 min |\n"
        "| vae | — | — | — | **ERROR**: a \\| b | — |\n"
    )
    rows = [
        reproduce.Row("gan", "fid", 7.5, (7.5, 1.0), 40.0),
        reproduce.Row("new", "nll", 80.0, ("<=", 84.0), 2.0),
    ]
    text = reproduce.table(rows, quick=False, earlier=legacy)
    lines = text.splitlines()
    body = [line for line in lines if line.startswith("| ") and "experiment" not in line]
    assert [line.split(" | ")[0:2] for line in body] == [
        ["| cnn", "accuracy"],
        ["| gan", "fid"],  # this call's rows, in the place of the old ones
        ["| vae", "—"],
        ["| new", "nll"],
    ]
    assert body[0].endswith("| 1 |") and body[2].endswith("| 1 |")  # kept, from the old run
    assert body[1].endswith("| 2 |") and "| 7.5 |" in body[1] and "| 40.0 min |" in body[1]
    assert "**ERROR**: a \\| b" in body[2]
    assert "- run 1: `gen-jax reproduce`, full recipes; 2026-11-23 10:44 UTC" in text
    assert "- run 2: `gen-jax reproduce`, full recipes;" in text and provenance.hardware() in text

    monkeypatch.setattr(reproduce, "run_description", lambda quick: "a later call")
    again = reproduce.table(
        [reproduce.Row("cnn", "accuracy", 0.98, (0.99, 0.02), 3.5)], False, text
    )
    runs = dict(
        line[len("- run ") :].split(": ", 1) for line in again.splitlines() if "- run" in line
    )
    rows = {line.split(" | ")[0][2:]: line for line in again.splitlines() if line.startswith("| ")}
    run_of = lambda experiment: runs[rows[experiment].split(" | ")[-1].rstrip(" |")]
    assert len(runs) == 3 and "| 0.98 |" in rows["cnn"] and run_of("cnn") == "a later call"
    assert run_of("vae").endswith("AMD EPYC") and run_of("gan") == run_of("new") != run_of("cnn")


def tiny_experiment(folder, expected: tuple[float, float]):
    """A tiny classifier experiment file declaring a QUICK check of its accuracy."""
    path = write_experiment(folder / "tiny.py", "classifier")
    quick = {"overrides": ["--config.train.num_steps=6"], "expected": {"accuracy": expected}}
    path.write_text(
        path.read_text() + f"\n\nEXPECTED = {{'accuracy': (1.0, 0.0)}}\nQUICK = {quick}\n"
    )
    return path


def reproduce_quick(tmp_path) -> tuple[int, str]:
    out = tmp_path / "table.md"
    folders = ["--runs", str(tmp_path / "runs"), "--experiments", str(tmp_path)]
    code = cli.main(["reproduce", "tiny", "--quick", *folders, "--out", str(out)])
    return code, out.read_text()


@pytest.mark.slow
def test_the_table_reports_the_run_it_made_and_fails_when_the_tolerance_is_missed(
    tmp_path, mock_mnist
):
    tiny_experiment(tmp_path, (0.5, 1.0))  # any accuracy passes
    code, text = reproduce_quick(tmp_path)
    assert code == 0
    records = (tmp_path / "runs/quick/tiny/metrics.jsonl").read_text().splitlines()
    accuracy = [json.loads(r) for r in records if '"test"' in r and '"accuracy"' in r][-1]
    row = next(line for line in text.splitlines() if line.startswith("| tiny | accuracy"))
    assert f"| {accuracy['value']:.4g} |" in row and "| pass |" in row
    assert "jax" in text and "gen_jax" in text

    tiny_experiment(tmp_path, (accuracy["value"] + 0.5, 0.1))  # now no accuracy can pass
    code, text = reproduce_quick(tmp_path)
    assert code == 1
    assert "**FAIL**" in text and f"| {accuracy['value']:.4g} |" in text
    logged = (tmp_path / "runs/quick/tiny/metrics.jsonl").read_text().splitlines()
    assert logged == records  # the finished run reported what it logged: no training, no eval


def _row(text: str, metric: str = "accuracy") -> tuple[str, str]:
    """(the tiny experiment's row, the description of the run that measured it)."""
    runs = dict(re.findall(r"^- run (\d+): (.*)$", text, flags=re.MULTILINE))
    row = next(line for line in text.splitlines() if line.startswith(f"| tiny | {metric}"))
    return row, runs[row.rstrip(" |").rsplit("| ", 1)[1]]


def test_a_finished_run_read_again_is_reported_as_the_run_that_measured_it(tmp_path, mock_mnist):
    tiny_experiment(tmp_path, (0.5, 1.0))
    _, text = reproduce_quick(tmp_path)
    assert _row(text)[1].startswith("`gen-jax reproduce --quick`")  # trained by this call
    _, text = reproduce_quick(tmp_path)
    _, run = _row(text)
    trained = provenance.trained_by(tmp_path / "runs/quick/tiny")[-1]
    assert run.startswith(f"read from a run trained {trained['time']}")
    assert provenance.versions() in run and provenance.hardware() in run
    (tmp_path / "runs/quick/tiny" / provenance.RECORD).unlink()  # a run from before the record
    _, text = reproduce_quick(tmp_path)
    assert _row(text)[1] == (
        "read from a run trained earlier (when and with which versions is unknown: it "
        "predates gen_jax's record of them)"
    )


@pytest.mark.slow
def test_a_finished_run_with_other_settings_says_so_and_retrain_trains_it_anew(
    tmp_path, mock_mnist
):
    path = tiny_experiment(tmp_path, (0.5, 1.0))
    reproduce_quick(tmp_path)
    path.write_text(path.read_text().replace("0.001", "0.002"))  # the file's learning rate
    _, text = reproduce_quick(tmp_path)
    row, _ = _row(text)
    assert (
        "trained with other settings than the file's: optimizer.learning_rate: 0.001 -> 0.002"
        in row
    )
    folders = ["--runs", str(tmp_path / "runs"), "--experiments", str(tmp_path)]
    out = ["--out", str(tmp_path / "table.md")]
    assert cli.main(["reproduce", "tiny", "--quick", "--retrain", *folders, *out]) == 0
    row, run = _row((tmp_path / "table.md").read_text())
    assert "other settings" not in row and run.startswith("`gen-jax reproduce --quick`")
    (old,) = (tmp_path / "runs/quick").glob("tiny.before-*")  # moved aside, never deleted
    assert config_lib.load(old / "config.json").optimizer.learning_rate == 0.001


def test_a_finished_run_lacking_a_metric_is_evaluated_again_not_trained(tmp_path, mock_mnist):
    tiny_experiment(tmp_path, (0.5, 1.0))
    reproduce_quick(tmp_path)
    metrics = tmp_path / "runs/quick/tiny/metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    accuracy = next(r for r in records[::-1] if r["name"] == "accuracy")
    kept = [r for r in records if r is not accuracy]  # as if accuracy were new in gen_jax
    metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    _, again = reproduce_quick(tmp_path)
    assert _row(again)[0].split(" | ")[2] == f"{accuracy['value']:.4g}"
    after = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["name"] for r in after].count("first_step_seconds") == 1  # not trained again
    assert after[-1]["name"] == "accuracy" and after[-1]["step"] == accuracy["step"]


def test_training_time_leaves_out_the_pause_between_a_stop_and_the_resume(tmp_path):
    def record(minute, name="loss", split="train"):
        return {"step": 0, "split": split, "name": name, "value": 0.0, "time": 60.0 * minute}

    records = [
        record(0, "first_step_seconds"),
        record(10),
        record(12, "accuracy", "test"),  # evaluations between training records count
        record(15),
        record(100, "first_step_seconds"),  # resumed 85 minutes later
        record(120),
        record(130, "accuracy", "test"),  # the final evaluation does not
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert reproduce.training_minutes(tmp_path) == pytest.approx(15 + 20)


def test_goals_are_one_sided_bounds():
    row = lambda value, check: reproduce.Row("x", "nll", value, check, 1.0)
    assert row(83.0, ("<=", 84.0)).passed and not row(85.0, ("<=", 84.0)).passed
    assert row(0.995, (">=", 0.992)).passed and not row(0.99, (">=", 0.992)).passed
    assert row(0.99, (0.9944, 0.002)).passed is False and row(0.994, (0.9944, 0.002)).passed


def test_experiments_that_cannot_run_get_error_rows_and_the_rest_still_runs(tmp_path, mock_mnist):
    tiny_experiment(tmp_path, (0.5, 1.0))
    write_experiment(tmp_path / "plain.py")  # declares nothing
    needy = write_experiment(tmp_path / "needy.py")
    needy.write_text(
        needy.read_text() + "\nQUICK = {'overrides': [], 'expected': {'loss': (0, 9)}}"
        "\nREQUIRES = {'task.name': 'missing'}\n"
    )
    (tmp_path / "broken.py").write_text(
        "QUICK = {'overrides': [], 'expected': {'loss': (0, 9)}}\n"
        "def get_config():\n    return 1 / 0\n"
    )
    out = tmp_path / "table.md"
    folders = ["--runs", str(tmp_path / "runs"), "--experiments", str(tmp_path)]
    names = ["nothing", "plain", "needy", "broken", "tiny"]
    assert cli.main(["reproduce", *names, "--quick", *folders, "--out", str(out)]) == 1
    text = out.read_text()
    assert "| nothing | — | — | — | **ERROR**: no experiment 'nothing'" in text
    assert "| plain | — | — | — | **ERROR**:" in text and "declares no QUICK run" in text
    assert "| needy | — | — | — | **ERROR**: needs the run of missing, which failed" in text
    assert "| broken | — | — | — | **ERROR**: ZeroDivisionError: division by zero" in text
    assert "| tiny | accuracy |" in text and "| pass |" in text


@pytest.mark.slow
def test_quick_reproduction_of_one_experiment_per_family_passes(quick_runs):
    code, _, table = quick_runs
    assert code == 0, table
    for name in QUICK_FAMILIES:
        assert f"| {name} |" in table


@pytest.mark.slow
def test_figures_are_each_runs_latest_pictures_and_a_2d_vaes_maps(tmp_path, mock_mnist):
    run = tmp_path / "runs/vae"
    path = write_experiment(tmp_path / "vae.py", "vae", **{"model.latent_dim": 2})
    train.run(config_lib.load_experiment(path), run)
    reproduce.save_figures("vae", run, tmp_path / "figures")
    drawn = sorted(p.name for p in (tmp_path / "figures").iterdir())
    kinds = ["latent_map", "manifold", "prior_samples", "reconstructions"]
    assert drawn == [f"vae_{kind}.png" for kind in kinds]
    latest = sorted(run.glob("samples/prior_samples_*.png"))[-1]
    assert (tmp_path / "figures/vae_prior_samples.png").read_bytes() == latest.read_bytes()


# ----------------------------------------------------------------------------- declared checks
EXPERIMENTS = [  # those `gen-jax reproduce` runs: all but the paper-scale recipes
    path
    for path in sorted((REPO / "experiments").glob("*.py"))
    if not hasattr(config_lib.load_module(path), "NOT_REPRODUCED")
]
SPLITS = ("train_split", "eval_split")


def pixel_features(images):
    """A stand-in for the classifier that scores a GAN: features and class probabilities."""
    flat = images.reshape(len(images), -1)
    return flat[:, :16], jax.nn.softmax(flat[:, 300:310])


@pytest.fixture(scope="module")
def reported_metrics(tmp_path_factory) -> dict[str, set[str]]:
    """Task name -> the names its final evaluation reports: each family's `summarize` of outputs
    shaped like its eval step's on one mocked batch (traced, not run: the names depend on no
    value), the sampling families scored by a stand-in classifier of 10 classes."""
    from tests.mocked_cli import mock_mnist

    root, mesh, reported = tmp_path_factory.mktemp("families"), parallel.make_mesh(), {}
    values = np.random.default_rng(0)
    with mock_mnist():
        for family in ("classifier", "vae", "gan", "diffusion"):
            config = config_lib.load_experiment(write_experiment(root / f"{family}.py", family))
            task = tasks.build(config)
            if family in ("gan", "diffusion"):  # as if task.classifier_workdir named a run
                task.scorer = sample_quality.SampleScorer(
                    pixel_features, None, config.data, config.task
                )
            splits = {k: data.get_split(config.data, config.data[k]) for k in SPLITS}
            example = workdir_lib.example_batch(splits["train_split"], config, mesh)
            state = jax.eval_shape(task.init, jax.random.PRNGKey(0), example)
            batch = next(data.eval_batches(splits["eval_split"], config.data))
            shapes = jax.eval_shape(functools.partial(task.eval_step, final=True), state, batch)
            outputs = jax.tree.map(
                lambda s: values.uniform(0.5, 1, s.shape).astype(s.dtype), shapes
            )
            if "samples" in outputs:  # diffusion's number of samples scored: this batch's rows
                outputs["samples"] = np.asarray(len(batch["mask"]))
            reported[config.task.name] = set(task.summarize([outputs]))
    return reported


def test_a_recipe_that_is_not_reproduced_says_why_when_asked_for(tmp_path):
    path = REPO / "experiments" / "cifar10_ddpm_ho2020.py"
    module = config_lib.load_module(path)
    assert not hasattr(module, "EXPECTED")
    with pytest.raises(GenJaxError, match="not reproduced by gen-jax reproduce: a paper-scale"):
        reproduce.declared(module, path, quick=True)
    assert "cifar10_ddpm_ho2020" not in reproduce.all_experiments(REPO / "experiments")
    assert len(EXPERIMENTS) >= 23  # every other experiment declares its checks


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda path: path.stem)
def test_an_experiment_declares_checks_of_metrics_its_task_reports(path, reported_metrics):
    """EXPECTED and QUICK: metrics the task reports, each (value, tolerance > 0) or ('<=' | '>=',
    bound); QUICK's overrides and the REQUIRES runs' paths apply to the config, whose task
    builds; REQUIRES names experiments of the folder."""
    module = config_lib.load_module(path)
    for quick in (False, True):
        overrides, expected, requires = reproduce.declared(module, path, quick)
        assert all((path.parent / f"{name}.py").is_file() for name in requires.values()), requires
        config = config_lib.experiment_config(module, path)
        runs = [f"--config.{key}=runs/{name}" for key, name in requires.items()]
        config_lib.apply_overrides(config, [*overrides, *runs])
        reported = reported_metrics[config.task.name]
        assert set(expected) <= reported, (sorted(set(expected) - reported), sorted(reported))
        number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
        for metric, (first, second) in expected.items():
            goal = first in reproduce.GOALS
            assert number(second) and (goal or (number(first) and second > 0)), (metric, first)
        for key in requires:  # a run this test does not have: the task builds without it
            config_lib.apply_overrides(config, [f"--config.{key}="])
        tasks.build(config)
