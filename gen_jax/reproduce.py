"""`gen-jax reproduce [NAME ...] [--quick]`: train experiments, check their numbers, write a table.

Each experiment file declares what it reproduces next to its `get_config()`:

    EXPECTED = {"accuracy": (0.9944, 0.002)}   # metric -> (expected value, tolerance),
                                               # or a goal: ("<=", 84.0) / (">=", 0.99)
    QUICK = {                                  # a shortened run for CI, with looser expectations
        "overrides": ["--config.train.num_steps=300"],
        "expected": {"accuracy": (0.975, 0.015)},
    }
    REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # config key -> experiment run first

or, instead, why it is not reproduced here: `NOT_REPRODUCED = "a recipe for accelerators ..."`
(a paper-scale recipe), which `gen-jax reproduce` leaves out and names when asked for it.

A metric passes when |value - expected| <= tolerance, or when it meets its goal. Runs go to
RUNS/NAME (RUNS/quick/NAME with `--quick`); a run that already finished there is not trained
again: its logged final evaluation is reported (delete the folder to start afresh). Training time
runs from a run's first metrics record to its last training record, summed over the processes
that trained it when it was stopped and resumed. The table goes between two
marker lines of the output file (RESULTS.md; RUNS/quick/RESULTS.md with `--quick`), keeping the
text around it and the rows of experiments this call did not run; each row names the call
(date, versions, hardware) that measured it. An experiment that fails to run gets an error row,
and the others still run. With `--figures DIR`, each run's latest pictures are copied to
DIR/NAME_KIND.png, and a 2-d VAE's latent map and decoded manifold are drawn there too.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import shutil
import sys
import traceback
from pathlib import Path
from types import ModuleType

import jax
from jax.experimental import multihost_utils

from gen_jax import (
    checkpoint,
    images,
    latent,
    provenance,
    resume_policy,
    tasks,
    train,
    workdir_lock,
)
from gen_jax import config as config_lib
from gen_jax.atomic import write_text_atomically
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import MetricWriter, logged_metrics, read_metrics

BEGIN, END = "<!-- gen-jax reproduce: begin -->", "<!-- gen-jax reproduce: end -->"
GOALS = {"<=": lambda value, bound: value <= bound, ">=": lambda value, bound: value >= bound}


@dataclasses.dataclass(frozen=True)
class Row:
    """One checked metric of one experiment (or why the experiment could not be checked)."""

    experiment: str
    metric: str
    value: float | None
    check: tuple  # (expected value, tolerance) or (">=" | "<=", bound)
    minutes: float | None
    error: str = ""
    run: str = ""  # who measured it, if not this call: a finished run read again
    note: str = ""  # how that run's config differs from the experiment file today

    @property
    def passed(self) -> bool:
        if self.error:
            return False
        first, second = self.check
        if first in GOALS:
            return GOALS[first](self.value, second)
        return abs(self.value - first) <= second

    @property
    def expected(self) -> str:
        first, second = self.check
        return f"{first} {second:.4g}" if first in GOALS else f"{first:.4g} ± {second:.3g}"


def declared(module: ModuleType, path: Path, quick: bool) -> tuple[list[str], dict, dict]:
    """(overrides, expected metrics, requirements) that an imported experiment file declares."""
    if hasattr(module, "NOT_REPRODUCED"):
        raise GenJaxError(f"{path} is not reproduced by gen-jax reproduce: {module.NOT_REPRODUCED}")
    if quick:
        if not hasattr(module, "QUICK"):
            raise GenJaxError(f"{path} declares no QUICK run; add one (see gen_jax/reproduce.py)")
        overrides, expected = list(module.QUICK["overrides"]), module.QUICK["expected"]
    else:
        overrides, expected = [], getattr(module, "EXPECTED", None)
    if not expected:
        raise GenJaxError(f"{path} declares no EXPECTED metrics; add them (gen_jax/reproduce.py)")
    for metric, check in expected.items():
        if len(check) != 2 or (isinstance(check[0], str) and check[0] not in GOALS):
            raise GenJaxError(
                f"{path}: {metric} expects (value, tolerance) or ('<=' | '>=', bound), "
                f"not {check!r}"
            )
    return overrides, expected, getattr(module, "REQUIRES", {})


def finished_evaluation(workdir: Path, config) -> dict[str, float] | None:
    """The logged evaluation at the last step of a run that finished in `workdir`, else None."""
    if checkpoint.latest_step(workdir / "checkpoints") != config.train.num_steps:
        return None
    return logged_metrics(workdir, config.train.num_steps, config.data.eval_split) or None


def reused_run(workdir: Path) -> str:
    """How a finished run read again (not trained by this call) was trained."""
    records = provenance.trained_by(workdir)
    if not records:
        return (
            "read from a run trained earlier (when and with which versions is unknown: it "
            "predates gen_jax's record of them)"
        )
    last = records[-1]
    return (
        f"read from a run trained {last['time']} (its last start, at step {last['from_step']}); "
        f"{last['versions']}; {last['hardware']}"
    )


def config_differences(workdir: Path, config) -> str:
    """The settings of a finished run that differ from `config` (today's experiment file) where
    they change results (`resume_policy`'s refused and recorded keys), and those it was resumed
    with; "" if none."""
    saved = config_lib.load(workdir / "config.json", absolute=True)
    config, _, _ = train.as_recorded(config)
    refused, recorded = resume_policy.sorted_changes(saved, config, same_data=False)
    changed = {**refused, **recorded}
    listed = resume_policy.listed(changed)
    notes = [f"trained with other settings than the file's: {listed}" if changed else ""]
    resumed = resume_policy.history(workdir)
    notes.append(f"resumed with other settings: {resumed}" if resumed else "")
    return "; ".join(filter(None, notes))


def reevaluated(workdir: Path, config, logged: dict[str, float]) -> dict[str, float]:
    """A finished run's logged final evaluation, with the metrics it lacks (added to gen_jax's
    evaluation after it was trained) evaluated now, with today's evaluation settings, and
    logged beside the others."""
    from gen_jax.run import load_run

    run = load_run(workdir)
    settings = {
        key: value
        for key, value in config.task.items()
        if f"task.{key}" in resume_policy.FREE and run.config.task.get(key) != value
    }
    evaluated = run.evaluate(**settings)
    new = {k: v for k, v in evaluated.items() if k not in logged and k != "step"}
    step = config.train.num_steps
    with workdir_lock.held_by_process_0(workdir):
        writer = MetricWriter(workdir, enabled=jax.process_index() == 0, start_step=step)
        writer.write(step, config.data.eval_split, new)
        writer.close()
    return {**logged, **new}


def move_aside(workdir: Path) -> Path:
    """Move a run to be trained anew (`--retrain`) to WORKDIR.before-TIME, never deleting it."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = workdir.with_name(f"{workdir.name}.before-{stamp}")
    workdir.rename(target)
    return target


def training_minutes(workdir: Path) -> float:
    """Minutes of training: each process that trained the run (its records begin with the first
    step's time) counts from its first record to its last training record, so neither the pause
    between a stop and a resume nor re-evaluating a finished run later counts."""
    spans: list[list[float]] = []  # [first record, last training record] per process
    for record in read_metrics(workdir):
        if not spans or record["name"] == "first_step_seconds":
            spans.append([record["time"], record["time"]])
        if record["split"] == "train":
            spans[-1][1] = record["time"]
    return sum(last - first for first, last in spans) / 60


def save_figures(name: str, workdir: Path, figures: Path) -> None:
    """Copy a run's latest picture of each kind to FIGURES/NAME_KIND.png; where the run encodes
    images into 2-d latents (a VAE's), draw the latent map of its eval split and its decoded
    manifold beside them."""
    figures.mkdir(parents=True, exist_ok=True)
    latest = {png.stem.rsplit("_", 1)[0]: png for png in sorted(workdir.glob("samples/*.png"))}
    for kind, png in latest.items():
        shutil.copyfile(png, figures / f"{name}_{kind}.png")
    config = config_lib.load(workdir / "config.json")
    if "encode" in tasks.family(config.task.name).can and config.model.get("latent_dim") == 2:
        import matplotlib.pyplot as plt

        from gen_jax.run import load_run

        run = load_run(workdir)
        split = run.images()
        points, _ = latent.project_2d(run.encode(split["image"])[0])
        title = f"{name}: posterior means of the {config.data.eval_split} set"
        figure = latent.scatter_figure(points, split["label"], title)
        figure.savefig(figures / f"{name}_latent_map.png", dpi=80)
        plt.close(figure)
        manifold = images.grid(latent.manifold_grid(run.decode))
        images.save_png(manifold, figures / f"{name}_manifold.png")


def reproduce(
    names: list[str],
    experiments: Path,
    runs: Path,
    quick: bool = False,
    figures: Path | None = None,
    retrain: bool = False,
) -> list[Row]:
    """Train each named experiment after its requirements, or read the run that finished in
    RUNS/NAME (re-evaluated if it lacks a metric; `retrain`: moved aside and trained anew);
    check its metrics."""
    rows: list[Row] = []
    workdirs: dict[str, Path | None] = {}  # None: the experiment failed

    def run_one(name: str) -> Path | None:
        if name in workdirs:
            return workdirs[name]
        workdirs[name] = None
        try:
            workdirs[name] = train_and_check(name)
        except Exception as error:  # any failure: an error row, and the others still run
            message = str(error).splitlines()[0] if str(error) else ""
            if not isinstance(error, GenJaxError):  # unforeseen: the row names it, stderr has all
                traceback.print_exc()
                message = f"{type(error).__name__}: {message}"
            rows.append(Row(name, "—", None, (0, 0), None, error=message.replace("|", "\\|")))
        return workdirs[name]

    def train_and_check(name: str) -> Path:
        path = experiments / f"{name}.py"
        if not path.is_file():
            known = sorted(p.stem for p in experiments.glob("*.py"))
            raise GenJaxError(f"no experiment '{name}' in {experiments}; known: {known}")
        module = config_lib.load_module(path)
        overrides, expected, requires = declared(module, path, quick)
        for key, required in requires.items():  # e.g. the classifier whose features score a GAN
            if run_one(required) is None:
                raise GenJaxError(f"needs the run of {required}, which failed")
            overrides.append(f"--config.{key}={workdirs[required]}")
        config = config_lib.experiment_config(module, path)
        config_lib.apply_overrides(config, overrides)
        workdir = runs / name
        logged = finished_evaluation(workdir, config)
        if logged and retrain:
            with workdir_lock.held_by_process_0(workdir):  # not while a trainer runs there
                pass
            if jax.process_index() == 0:
                moved = move_aside(workdir)
                print(f"gen-jax: --retrain: moved {workdir} to {moved}", file=sys.stderr)
            multihost_utils.sync_global_devices(f"gen_jax_retrain_{name}")
            logged = None
        reused = {}
        if logged is None:
            metrics = train.run(config, workdir)
        else:
            metrics = logged
            if set(expected) - set(logged):
                metrics = reevaluated(workdir, config, logged)
            reused = {"run": reused_run(workdir), "note": config_differences(workdir, config)}
        missing = sorted(set(expected) - set(metrics))
        if missing:
            raise GenJaxError(f"reported no {missing}; it has {sorted(metrics)}")
        minutes = training_minutes(workdir)
        for metric, check in expected.items():
            rows.append(Row(name, metric, metrics[metric], tuple(check), minutes, **reused))
        if figures and jax.process_index() == 0:
            save_figures(name, workdir, figures)
        return workdir

    for name in names:
        run_one(name)
    return rows


def run_description(quick: bool) -> str:
    """What one call of `gen-jax reproduce` ran: mode, time, versions and hardware."""
    stamp = provenance.utc_now()
    mode = "quick (shortened runs, looser tolerances)" if quick else "full recipes"
    return (
        f"`gen-jax reproduce{' --quick' if quick else ''}`, {mode}; {stamp}; "
        f"{provenance.versions()}; {provenance.hardware()}"
    )


def row_cells(row: Row) -> list[str]:
    """A row's table cells, the run column left out."""
    if row.error:
        return [row.experiment, "—", "—", "—", f"**ERROR**: {row.error}", "—"]
    result = "pass" if row.passed else "**FAIL**"
    if row.note:
        result += f" ({row.note})".replace("|", "\\|")
    value, minutes = f"{row.value:.4g}", f"{row.minutes:.1f} min"
    return [row.experiment, row.metric, value, row.expected, result, minutes]


def earlier_rows(block: str) -> list[tuple[list[str], str]]:
    """(cells without the run column, run description) of each row of a table `table` wrote; a
    table from before the run column has one run, described by its first line."""
    runs = dict(re.findall(r"^- run (\d+): (.*)$", block, flags=re.MULTILINE))
    only_run = "" if runs else block.split("\n", 1)[0].rstrip(".")
    rows = []
    for line in block.splitlines():
        if not line.startswith("| ") or line.startswith(("| experiment |", "|---")):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append((cells[:6], runs.get(cells[6], "") if len(cells) > 6 else only_run))
    return rows


def table(rows: list[Row], quick: bool, earlier: str = "") -> str:
    """One Markdown table of this call's rows and, for experiments it did not run, the rows of
    the `earlier` table (the one between the markers), each naming the call that measured it."""
    by_experiment: dict[str, list[tuple[list[str], str]]] = {}
    for cells, run in earlier_rows(earlier):
        by_experiment.setdefault(cells[0], []).append((cells, run))
    now, fresh = run_description(quick), {}
    for row in rows:
        fresh.setdefault(row.experiment, []).append((row_cells(row), row.run or now))
    by_experiment.update(fresh)  # a rerun experiment keeps its place; a new one goes last
    merged = [entry for entries in by_experiment.values() for entry in entries]
    numbers = {run: str(i + 1) for i, run in enumerate(dict.fromkeys(run for _, run in merged))}
    lines = [
        "Each row names the `gen-jax reproduce` call that measured it:",
        "",
        *[f"- run {number}: {run}" for run, number in numbers.items()],
        "",
        "| experiment | metric | value | expected | result | training time | run |",
        "|---|---|---|---|---|---|---|",
        *["| " + " | ".join([*cells, numbers[run]]) + " |" for cells, run in merged],
    ]
    return "\n".join(lines) + "\n"


def split_at_markers(path: Path) -> tuple[str, str, str] | None:
    """(text before the begin marker, the table between the markers, text after the end marker)
    of `path`; None when it has neither marker (or does not exist). Anything else (a marker
    missing, repeated, or the end before the begin) is an error that names the fix, raised
    before anything is run or written."""
    text = path.read_text() if path.is_file() else ""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise GenJaxError(
            f"{path} must have exactly one line {BEGIN} and, after it, one line {END} around "
            f"the table that `gen-jax reproduce` writes; it has {len(begins)} begin and "
            f"{len(ends)} end marker(s){' (the end first)' if begins and ends else ''}. Nothing "
            "was run or changed: mend the markers by hand (the table is the text between "
            "them), or pass --out to write elsewhere."
        )
    (begin,), (end,) = begins, ends
    return "".join(lines[:begin]), "".join(lines[begin + 1 : end]), "".join(lines[end + 1 :])


def table_in(path: Path) -> str:
    """The text between the marker lines of `path` ("" when there is none)."""
    parts = split_at_markers(path)
    return "" if parts is None else parts[1].strip("\n")


def write_table(text: str, path: Path) -> None:
    """Put `text` between the marker lines of `path` (appending them if absent), replacing the
    file whole (a kill or a full disk leaves the old one)."""
    block = f"{BEGIN}\n{text}{END}\n"
    parts = split_at_markers(path)
    if parts is None:
        old = path.read_text() if path.is_file() else ""
        new = (old.rstrip("\n") + "\n\n" if old else "") + block
    else:
        new = parts[0] + block + parts[2].lstrip("\n")
    write_text_atomically(path, new)


def all_experiments(experiments: Path) -> list[str]:
    """Every experiment in the folder that declares EXPECTED metrics, in name order."""
    if not experiments.is_dir():
        raise GenJaxError(
            f"no experiment folder {experiments}; run from the repository or pass --experiments"
        )
    names = [
        p.stem
        for p in sorted(experiments.glob("*.py"))
        if hasattr(config_lib.load_module(p), "EXPECTED")
    ]
    if not names:
        raise GenJaxError(f"no experiment in {experiments} declares EXPECTED metrics")
    return names


def main(
    names: list[str],
    quick: bool,
    runs: Path,
    out: Path | None,
    experiments: Path,
    figures: Path | None = None,
    retrain: bool = False,
) -> int:
    """The CLI command: 0 when every metric passes, 1 otherwise."""
    runs = runs / "quick" if quick else runs
    path = out or (runs / "RESULTS.md" if quick else Path("RESULTS.md"))
    split_at_markers(path)  # a file whose markers are broken fails now, not after training
    chosen = names or all_experiments(experiments)
    rows = reproduce(chosen, experiments, runs, quick, figures, retrain)
    if jax.process_index() == 0:
        text = table(rows, quick, earlier=table_in(path))
        write_table(text, path)
        print(text)
    return 0 if all(row.passed for row in rows) else 1
