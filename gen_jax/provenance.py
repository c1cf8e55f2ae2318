"""Where a number came from: gen_jax's version and git commit, jax's, and the hardware; recorded
in every workdir (`trained_by.jsonl`, a line per training invocation) and in reproduce's tables."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import subprocess
from pathlib import Path

import jax

import gen_jax

VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"))  # widest first
RECORD = "trained_by.jsonl"


def hardware() -> str:
    """The processor (or accelerator) and device count, in words."""
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        kind = _cpu_model() or platform.processor() or kind
    return f"{len(devices)} x {kind}" if len(devices) > 1 else kind


def _cpu_model() -> str | None:
    """The CPU's model name, family and model numbers (which tell a VM's generic name apart),
    core count and widest vector extension: what its speed depends on."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    first_processor = cpuinfo.read_text().split("\n\n", 1)[0].splitlines()
    pairs = (line.split(":", 1) for line in first_processor if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    if "model name" not in fields:
        return None
    flags = fields.get("flags", "").split()
    vector = next((name for flag, name in VECTOR_EXTENSIONS if flag in flags), None)
    family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    details = ", ".join(filter(None, [family, f"{os.cpu_count()} cores", vector]))
    return f"{fields['model name']} ({details})"


@functools.cache
def commit() -> str | None:
    """The git commit gen_jax runs from, "+dirty" if its files differ from it; None outside a
    git checkout (an installed wheel)."""
    folder = Path(gen_jax.__file__).parent
    git = lambda *args: subprocess.run(
        ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def versions() -> str:
    """gen_jax's version (and commit) and jax's, in words."""
    made = f" (commit {commit()})" if commit() else ""
    return f"gen_jax {gen_jax.__version__}{made}, jax {jax.__version__}"


def utc_now() -> str:
    """The time, to the minute, as the tables write it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record_training(workdir: Path, step: int) -> None:
    """Append who trains the run from `step` on: the time, versions and hardware."""
    entry = {"from_step": step, "time": utc_now(), "versions": versions(), "hardware": hardware()}
    with open(Path(workdir) / RECORD, "a") as log:
        log.write(json.dumps(entry) + "\n")


def trained_by(workdir: Path) -> list[dict]:
    """The run's training invocations, oldest first ([] for runs from before the record)."""
    path = Path(workdir) / RECORD
    if not path.is_file():
        return []
    return [
        json.loads(line)
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    ]
