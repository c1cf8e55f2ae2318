"""FID against the number of network evaluations (NFE) of finished diffusion runs: each point is
the run's own final evaluation (`Run.evaluate`) with the sampler and its steps changed, so it is
scored exactly as the training run's numbers are (the classifier run's features, the real floor).

    python benchmarks/fid_vs_nfe.py runs/mnist_ddpm runs/mnist_flow [--nfe 10 25 50 100]
        [--samplers ddim euler heun] [--guidance 1 2] [--samples 10000]
        [--results docs/figures/fid_vs_nfe.json] [--plot docs/figures/fid_vs_nfe.png]

Prints a markdown table (FID, FID / floor, IS, precision, recall, and the wall time of each
evaluation, which is mostly sampling) and, with --plot, draws FID against NFE, one line per run,
sampler and guidance scale. Heun makes 2 steps - 1 evaluations, so its NFE are the odd numbers at
or below those asked for; a guided sampler (--guidance, for a class-conditional run) evaluates the
network twice per step, so its NFE are twice those. With --results, the sweeps are also kept in
a JSON file, and the table and plot show every sweep in it: a long sweep can run in slices, one
run or sampler at a time (with no run named, the saved sweeps are only shown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gen_jax.run import load_run
from gen_jax.tasks import samplers

COLUMNS = ("fid", "fid_over_floor", "inception_score", "precision", "recall")


def sweep(
    workdir: str, sampler: str, nfes: list[int], samples: int, guidance: float | None
) -> list[dict]:
    """The final evaluation of the run in `workdir` by `sampler` at each (unguided) NFE, at a
    guidance scale (None: the run's own)."""
    run = load_run(workdir)
    scale = {} if guidance is None else {"guidance_scale": guidance}
    rows = []
    for nfe in nfes:
        start = time.perf_counter()
        metrics = run.evaluate(
            sampler=sampler,
            sample_steps=samplers.steps_for(sampler, nfe),
            final_eval_samples=samples,
            **scale,
        )
        seconds = time.perf_counter() - start
        rows.append({**{k: float(v) for k, v in metrics.items()}, "seconds": seconds})
    return rows


def merge(
    path: Path, results: dict[tuple, list[dict]], samples: int
) -> tuple[dict[tuple, list[dict]], int]:
    """The sweeps saved in `path` with `results` added (replacing those of the same run, sampler
    and guidance), written back when there are new ones; and the file's samples per point."""
    saved = json.loads(path.read_text()) if path.is_file() else {"samples": samples, "sweeps": []}
    sweeps = {tuple(entry["key"]): entry["rows"] for entry in saved["sweeps"]}
    if results:
        if saved["samples"] != samples:
            raise SystemExit(
                f"{path} holds sweeps of {saved['samples']} samples, not {samples}: "
                "name another file"
            )
        sweeps.update(results)
        listed = [{"key": list(key), "rows": rows} for key, rows in sweeps.items()]
        path.write_text(json.dumps({"samples": samples, "sweeps": listed}, indent=1) + "\n")
    return sweeps, saved["samples"]


def name(workdir: str, sampler: str, guidance: float | None) -> str:
    """A row's label: the run, the sampler, and a guidance scale that was asked for."""
    scale = "" if guidance is None else f", guidance {guidance:g}"
    return f"{Path(workdir).name}, {sampler}{scale}"


def plot(results: dict[tuple, list[dict]], path: Path, samples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for key, rows in results.items():
        axis.plot([r["nfe"] for r in rows], [r["fid"] for r in rows], "o-", label=name(*key))
    floor = next(iter(results.values()))[0]["floor_fid"]
    axis.axhline(floor, color="gray", linestyle="--", label="real floor")
    axis.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="FID")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axis.xaxis.set_major_formatter(plain)  # 3, 10, 20 rather than 3x10^0, 10^1, 2x10^1
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(plain)
    axis.set_title(f"{samples:,} samples per point", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        nargs="*",
        help="finished diffusion runs with a classifier (none: with --results, "
        "only print and plot the saved sweeps)",
    )
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--samplers", nargs="+", default=["ddim", "euler", "heun"])
    parser.add_argument(
        "--guidance", type=float, nargs="+", default=[None], help="(default: each run's own)"
    )
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--results", type=Path, help="a JSON file the sweeps are added to")
    parser.add_argument("--plot", type=Path, help="a PNG of FID against NFE")
    args = parser.parse_args()
    if not args.runs and not (args.results and args.results.is_file()):
        parser.error("name a run to sweep, or --results with a file of saved sweeps to show")
    results = {
        (workdir, sampler, scale): sweep(workdir, sampler, args.nfe, args.samples, scale)
        for workdir in args.runs
        for sampler in args.samplers
        for scale in args.guidance
    }
    samples = args.samples
    if args.results:  # with no run named, the file's sample count
        results, samples = merge(args.results, results, samples)
    print(f"{samples} samples per point; FID in each run's classifier features")
    print("| run, sampler | NFE | " + " | ".join(COLUMNS) + " | eval s |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for key, rows in results.items():
        for r in rows:
            values = " | ".join(f"{r[k]:.3f}" for k in COLUMNS)
            print(f"| {name(*key)} | {r['nfe']:.0f} | {values} | {r['seconds']:.0f} |")
    if args.plot:
        plot(results, args.plot, samples)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
