"""`gen-jax reproduce [NAME ...] [--quick]`: train experiments, check their numbers, write a table.

Each experiment file declares what it reproduces next to its `get_config()`:

    EXPECTED = {"accuracy": (0.9944, 0.002)}   # metric -> (expected value, tolerance)
    QUICK = {                                  # a shortened run for CI, with looser expectations
        "overrides": ["--config.train.num_steps=300"],
        "expected": {"accuracy": (0.975, 0.015)},
    }
    REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # config key -> experiment run first

A metric passes when |value - expected| <= tolerance. Runs go to RUNS/NAME (RUNS/quick/NAME with
`--quick`); an existing finished run is evaluated again rather than retrained, and its training
time (first to last metrics record, evaluations included) is what the table reports. The table
goes between two marker lines of the output file (RESULTS.md by default), keeping the text around
it. With `--figures DIR`, each run's latest pictures are copied to DIR/NAME_KIND.png, and a 2-d
VAE's latent map and decoded manifold are drawn there too.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import jax

import gen_jax
from gen_jax import config as config_lib
from gen_jax import images, latent, train
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import read_metrics

BEGIN, END = "<!-- gen-jax reproduce: begin -->", "<!-- gen-jax reproduce: end -->"


@dataclasses.dataclass(frozen=True)
class Row:
    """One checked metric of one experiment."""

    experiment: str
    metric: str
    value: float
    expected: float
    tolerance: float
    minutes: float

    @property
    def passed(self) -> bool:
        return abs(self.value - self.expected) <= self.tolerance


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared(path: Path, quick: bool) -> tuple[list[str], dict, dict]:
    """(overrides, expected metrics, requirements) an experiment file declares."""
    module = _module(path)
    expected = getattr(module, "EXPECTED", None)
    if quick:
        quick_spec = getattr(module, "QUICK", None)
        if quick_spec is None:
            raise GenJaxError(f"{path} declares no QUICK run; add one (see gen_jax/reproduce.py)")
        overrides, expected = list(quick_spec["overrides"]), quick_spec["expected"]
    else:
        overrides = []
    if not expected:
        raise GenJaxError(f"{path} declares no EXPECTED metrics; add them (gen_jax/reproduce.py)")
    return overrides, expected, getattr(module, "REQUIRES", {})


def training_minutes(workdir: Path) -> float:
    """Minutes from a run's first to its last metrics record."""
    records = read_metrics(workdir)
    return (records[-1]["time"] - records[0]["time"]) / 60


def save_figures(name: str, workdir: Path, figures: Path) -> None:
    """Copy a run's latest picture of each kind to FIGURES/NAME_KIND.png; draw a 2-d VAE's
    latent map of the test set and its decoded manifold beside them."""
    figures.mkdir(parents=True, exist_ok=True)
    latest = {png.stem.rsplit("_", 1)[0]: png for png in sorted(workdir.glob("samples/*.png"))}
    for kind, png in latest.items():
        shutil.copyfile(png, figures / f"{name}_{kind}.png")
    config = config_lib.load(workdir / "config.json")
    if config.task.name == "vae" and config.model.latent_dim == 2:
        from gen_jax.run import load_run

        run = load_run(workdir)
        test = run.images("test")
        points, _ = latent.project_2d(run.encode(test["image"])[0])
        title = f"{name}: posterior means of the test set"
        latent.scatter_figure(points, test["label"], title).savefig(
            figures / f"{name}_latent_map.png", dpi=80
        )
        manifold = images.grid(latent.manifold_grid(run.decode))
        images.save_png(manifold, figures / f"{name}_manifold.png")


def reproduce(
    names: list[str],
    experiments: Path,
    runs: Path,
    quick: bool = False,
    figures: Path | None = None,
) -> list[Row]:
    """Train (or re-evaluate) each named experiment and its requirements; check its metrics."""
    rows, finished = [], {}

    def run_one(name: str) -> Path:
        if name in finished:
            return finished[name]
        path = experiments / f"{name}.py"
        if not path.is_file():
            known = sorted(p.stem for p in experiments.glob("*.py"))
            raise GenJaxError(f"no experiment '{name}' in {experiments}; known: {known}")
        overrides, expected, requires = _declared(path, quick)
        for key, required in requires.items():  # e.g. the classifier whose features score a GAN
            overrides.append(f"--config.{key}={run_one(required)}")
        config = config_lib.load_experiment(path)
        config_lib.apply_overrides(config, overrides)
        workdir = runs / name
        metrics = train.run(config, workdir)
        minutes = training_minutes(workdir)
        if figures and jax.process_index() == 0:
            save_figures(name, workdir, figures)
        for metric, (value, tolerance) in expected.items():
            if metric not in metrics:
                raise GenJaxError(f"{name} reported no '{metric}'; it has {sorted(metrics)}")
            rows.append(Row(name, metric, metrics[metric], value, tolerance, minutes))
        finished[name] = workdir
        return workdir

    for name in names:
        run_one(name)
    return rows


def hardware() -> str:
    """The processor (or accelerator) and device count, in words."""
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        kind = _cpu_model() or platform.processor() or kind
    return f"{len(devices)} x {kind}" if len(devices) > 1 else kind


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return None


def table(rows: list[Row], quick: bool) -> str:
    """The results as one Markdown table, with what it ran on and when."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (shortened runs, looser tolerances)" if quick else "full recipes"
    lines = [
        f"`gen-jax reproduce{' --quick' if quick else ''}`, {mode}; {stamp}; "
        f"gen_jax {gen_jax.__version__}, jax {jax.__version__}; {hardware()}.",
        "",
        "| experiment | metric | value | expected | tolerance | result | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.experiment} | {row.metric} | {row.value:.4g} | {row.expected:.4g} | "
            f"± {row.tolerance:.3g} | {'pass' if row.passed else '**FAIL**'} | "
            f"{row.minutes:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def write_table(text: str, path: Path) -> None:
    """Put `text` between the marker lines of `path` (appending them if absent)."""
    block = f"{BEGIN}\n{text}{END}\n"
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        before, rest = old.split(BEGIN, 1)
        new = before + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def all_experiments(experiments: Path) -> list[str]:
    """Every experiment that declares expected metrics, in name order."""
    return sorted(p.stem for p in experiments.glob("*.py") if "EXPECTED" in p.read_text())


def main(
    names: list[str],
    quick: bool,
    runs: Path,
    out: Path | None,
    experiments: Path,
    figures: Path | None = None,
) -> int:
    """The CLI command: 0 when every metric passes, 1 otherwise."""
    runs = runs / "quick" if quick else runs
    rows = reproduce(names or all_experiments(experiments), experiments, runs, quick, figures)
    text = table(rows, quick)
    if jax.process_index() == 0:
        write_table(text, out or (runs / "RESULTS.md" if quick else Path("RESULTS.md")))
        print(text)
    return 0 if all(row.passed for row in rows) else 1
