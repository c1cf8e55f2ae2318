"""`gen-jax train EXPERIMENT.py --workdir DIR [--config.a.b=v ...]`, `gen-jax evaluate DIR`,
`gen-jax sample DIR --num 64 --out grid.png`, `gen-jax reproduce [NAME ...] [--quick]` and
`gen-jax fid A B`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from gen_jax.errors import GenJaxError, PeerLostError, RunStopped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gen-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train or resume an experiment in a workdir")
    train.add_argument("experiment", help="a Python file defining get_config()")
    train.add_argument("--workdir", required=True, help="where config, logs and checkpoints go")
    train.add_argument(
        "--stop_at",
        type=int,
        default=None,
        help="checkpoint and exit once this step is trained; run again to continue",
    )
    train.add_argument(
        "--from_step",
        type=int,
        default=None,
        help="resume from this older checkpoint; the newer ones go to set_aside_checkpoints/",
    )
    train.add_argument(
        "--allow_config_change",
        action="store_true",
        help="resume although settings that change what is trained differ (recorded)",
    )
    train.add_argument(
        "--break_lock",
        action="store_true",
        help="take over the workdir from a trainer that another host left (killed, host gone)",
    )
    evaluate = sub.add_parser("evaluate", help="print a run's eval metrics as JSON")
    evaluate.add_argument("workdir")
    evaluate.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    sample = sub.add_parser("sample", help="write a grid of a run's samples as PNG")
    sample.add_argument("workdir")
    sample.add_argument("--num", type=int, default=64, help="how many samples")
    sample.add_argument("--out", default="samples.png", help="the PNG file to write")
    sample.add_argument(
        "--folder", help="write each sample as its own PNG file here instead (e.g. for FID tools)"
    )
    sample.add_argument("--seed", type=int, default=0, help="seed of the latents")
    sample.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    sample.add_argument("--steps", type=int, help="diffusion: sampler steps (default the run's)")
    sample.add_argument(
        "--sampler", help="diffusion: ddim, ddpm, euler or heun (default the run's)"
    )
    sample.add_argument(
        "--guidance_scale",
        type=float,
        help="diffusion, class-conditional: guidance (default the run's)",
    )
    reproduce = sub.add_parser(
        "reproduce", help="train experiments, check their declared numbers, write a results table"
    )
    reproduce.add_argument("names", nargs="*", help="experiment names (default: all that declare)")
    reproduce.add_argument("--quick", action="store_true", help="shortened runs, looser checks")
    reproduce.add_argument("--runs", default="runs", help="where the runs go (quick: RUNS/quick)")
    reproduce.add_argument(
        "--out",
        help="Markdown file for the table (RESULTS.md; with --quick RUNS/quick/RESULTS.md)",
    )
    reproduce.add_argument("--experiments", default="experiments", help="experiment folder")
    reproduce.add_argument("--figures", help="copy each run's latest pictures to this folder")
    reproduce.add_argument(
        "--retrain",
        action="store_true",
        help="train finished runs anew (each moved aside to RUNS/NAME.before-TIME, not deleted)",
    )
    fid = sub.add_parser(
        "fid",
        help="FID, KID, precision and recall of two image sets in the FID Inception-v3's features",
        description="A and B: a folder of images, an .npz of images, a gen_jax run (its "
        "samples), tfds:NAME:SPLIT or folder:ROOT:SPLIT (cached features). Prints JSON with "
        "the protocol and the counts.",
    )
    fid.add_argument("a", help="the reference set, e.g. tfds:mnist:train or a folder")
    fid.add_argument("b", help="the set compared with it, e.g. runs/mnist_dcgan")
    fid.add_argument(
        "--num", type=int, default=0, help="images of each (a seeded subset; 0: all, a run 10k)"
    )
    fid.add_argument("--data_dir", help="the TFDS directory (default $TFDS_DATA_DIR)")
    fid.add_argument("--batch_size", type=int, default=100, help="images per Inception call")
    for command in (train, evaluate, fid):
        group = command.add_argument_group("multi-process runs (jax.distributed)")
        group.add_argument(
            "--coordinator_address", help="host:port of process 0, e.g. 127.0.0.1:12345"
        )
        group.add_argument("--num_processes", type=int)
        group.add_argument("--process_id", type=int)
        group.add_argument(
            "--heartbeat_timeout",
            type=int,
            default=100,
            help="seconds a process may stay silent (frozen, cut off) before the run stops; a "
            "process that exits is noticed at once (default 100, jax's)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gen-jax` console script."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        if overrides and args.command != "train":
            raise GenJaxError(f"unrecognised arguments: {' '.join(overrides)}")
        return _run(args, overrides)
    except RunStopped as stopped:
        print(f"gen-jax: {stopped}\n  {shlex.join(['gen-jax', *argv])}", file=sys.stderr)
        return stopped.status
    except GenJaxError as error:
        lost = isinstance(error, PeerLostError)
        rerun = f" On this process:\n  {shlex.join(['gen-jax', *argv])}" if lost else ""
        print(f"gen-jax: error: {error}{rerun}", file=sys.stderr)
        if lost:  # not a return: jax.distributed's shutdown at exit would wait for it and abort
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gen_jax import config as config_lib  # imports after parsing: `--help` stays instant

    if args.command == "train":  # validate the whole config before touching JAX or data
        config = config_lib.load_experiment(args.experiment)
        config_lib.apply_overrides(config, overrides)
    distributed = _distributed_flags(args)

    from gen_jax import host, parallel, train

    host.keep_freed_memory_in_heap()
    if distributed:
        parallel.initialize_distributed(*distributed)
    if args.command == "reproduce":
        from gen_jax import reproduce

        out, figures = (Path(p) if p else None for p in (args.out, args.figures))
        folders = (Path(args.runs), out, Path(args.experiments), figures)
        return reproduce.main(args.names, args.quick, *folders, retrain=args.retrain)
    if args.command == "train":
        options = {"break_lock": args.break_lock, "from_step": args.from_step}
        options["allow_change"] = args.allow_config_change
        metrics = train.run(config, args.workdir, args.stop_at, **options)
    elif args.command == "fid":
        metrics = _fid(args)
    elif args.command == "evaluate":
        from gen_jax.resume_policy import history
        from gen_jax.run import load_run

        metrics = load_run(args.workdir, args.step).evaluate()
        resumed = history(args.workdir)
        if resumed:  # beside the numbers: how the run was trained
            print(f"gen-jax: resumed with other settings: {resumed}", file=sys.stderr)
    else:
        metrics = _sample(args)
    import jax

    if jax.process_index() == 0:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _sample(args: argparse.Namespace) -> dict:
    """Write `--num` samples of a run as one PNG grid; return what was written."""
    from gen_jax import images
    from gen_jax.run import load_run

    if args.num < 1:
        raise GenJaxError(f"--num must be at least 1, not {args.num}")
    run = load_run(args.workdir, args.step)
    chosen = {"steps": args.steps, "sampler": args.sampler, "guidance_scale": args.guidance_scale}
    sampling = {k: v for k, v in chosen.items() if v is not None}
    samples = run.sample(args.num, args.seed, **sampling)
    if args.folder:
        path = images.save_pngs(samples, args.folder)
    else:
        path = images.save_png(images.grid(samples), args.out)
    return {"out": str(path), "num": args.num, "seed": args.seed, "step": run.step, **sampling}


def _fid(args: argparse.Namespace) -> dict:
    """Compare the two image sets `args.a` and `args.b` (gen_jax.image_sets)."""
    from gen_jax import image_sets
    from gen_jax.feature_spaces import Inception

    if args.num < 0 or args.batch_size < 1:
        raise GenJaxError("--num must be >= 0 (0: all) and --batch_size >= 1")
    space = Inception(batch_size=args.batch_size)
    a, b = (image_sets.load(s, space, args.num, args.data_dir) for s in (args.a, args.b))
    return image_sets.compare(a, b)


def _distributed_flags(args: argparse.Namespace) -> tuple[str, int, int, int] | None:
    """(coordinator address, process count, process index, heartbeat timeout) of a
    multi-process run, else None."""
    names = ("coordinator_address", "num_processes", "process_id")
    flags = tuple(getattr(args, name, None) for name in names)  # absent from other commands
    if all(flag is None for flag in flags):
        return None
    address, count, index = flags
    if address is None or count is None or index is None or not 0 <= index < count:
        raise GenJaxError(
            "a multi-process run needs --coordinator_address, --num_processes N and --process_id "
            "from 0 to N - 1, all three (e.g. --coordinator_address 127.0.0.1:12345 "
            "--num_processes 2 --process_id 0)"
        )
    if args.heartbeat_timeout < 1:
        raise GenJaxError(
            f"--heartbeat_timeout must be at least 1 second, not {args.heartbeat_timeout}"
        )
    return address, count, index, args.heartbeat_timeout


if __name__ == "__main__":
    sys.exit(main())
