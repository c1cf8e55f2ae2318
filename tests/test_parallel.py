"""Device set-up: how many devices a CPU host is split into."""

import os
import subprocess
import sys

from gen_jax import parallel

COUNT_DEVICES = (
    "from gen_jax import parallel; parallel.use_every_cpu_core(); "
    "import jax; print(jax.device_count())"
)


def device_count(**env) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    output = subprocess.check_output(
        [sys.executable, "-c", COUNT_DEVICES],
        env={**clean, "JAX_PLATFORMS": "cpu", **env},
        text=True,
    )
    return int(output.strip().splitlines()[-1])


def test_a_cpu_host_gets_one_device_per_core_as_a_power_of_two():
    cores = min(len(os.sched_getaffinity(0)), parallel.MAX_CPU_DEVICES)
    count = device_count()
    assert count <= cores < 2 * count


def test_an_explicit_device_count_is_respected():
    assert device_count(XLA_FLAGS="--xla_force_host_platform_device_count=3") == 3
    assert device_count(JAX_NUM_CPU_DEVICES="5") == 5
