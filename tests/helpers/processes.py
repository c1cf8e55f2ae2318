"""Fresh processes for tests: `gen-jax` on mocked MNIST (tests/mocked_cli.py) and a lock holder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.runs import REPO
from tests.mocked_cli import THEN

MOCKED_CLI = REPO / "tests" / "mocked_cli.py"


@contextlib.contextmanager
def mocked_cli(
    args: list[str], devices: int = 1, env: dict | None = None, **kwargs
) -> Iterator[subprocess.Popen]:
    """Run `gen-jax ARGS` in a fresh process on mocked MNIST with `devices` fake CPU devices.

    The process leads its own process group, which is killed when the block ends, however it
    ends (a failed assertion, a timeout): a test never leaves training processes behind."""
    full_env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    command = [sys.executable, str(MOCKED_CLI), *args]
    process = subprocess.Popen(command, env=full_env, cwd=REPO, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # none of the group is left
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def check_call_mocked_cli(
    args: list[str], devices: int = 1, env: dict | None = None, timeout: float = 300
) -> str:
    """Run `gen-jax ARGS` mocked to completion; fail the test with its output if it fails."""
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with mocked_cli(args, devices, env, **piped) as process:
        output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def chained(commands) -> list[str]:
    """One argument list that runs `commands` one after the other in one mocked process."""
    return [arg for i, command in enumerate(commands) for arg in ([THEN] if i else []) + command]


@contextlib.contextmanager
def locked_by_another_process(workdir: Path) -> Iterator[subprocess.Popen]:
    """A process of its own holds `workdir`'s trainer lock (`workdir_lock.held`) inside the block,
    as a running trainer does."""
    hold = (
        "import sys; from pathlib import Path; from gen_jax import workdir_lock\n"
        "with workdir_lock.held(Path(sys.argv[1])):\n"
        "    print('held', flush=True); sys.stdin.read()"
    )
    command = [sys.executable, "-c", hold, str(workdir)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, cwd=REPO, **pipes) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
            yield holder
        finally:
            holder.kill()
