"""experiments/cifar10_airbench.py's recipe on canonical CIFAR-10: a prepared TFDS `cifar10` where
there is one, else the python pickle batches (cifar-10-python.tar.gz, 170 MB) downloaded on first
use into ~/.cache/gen_jax and checked by their sha256 (gen_jax/data/canonical.py). Everything but
the data and their per-channel statistics is that file's, so the two differ by the data alone.

    gen-jax train experiments/cifar10_airbench_canonical.py --workdir runs/airbench_canonical

Goal (issue 22): >= 93.5% test accuracy; airbench94 reaches 94.01% on this data in 9.9 epochs, this
recipe trains 18. Not yet measured: the machines of this project reach no dataset host
(RESULTS.md, section 'CIFAR-10 (JPEG copy) classifier baseline', has the JPEG copy's numbers).
"""

from pathlib import Path

from gen_jax.config import load_module

JPEG_COPY = load_module(Path(__file__).with_name("cifar10_airbench.py"))


def get_config():
    config = JPEG_COPY.get_config()
    config.data.folder = ""
    config.data.name = "cifar10"  # data.source "auto": TFDS's prepared copy, else downloaded
    config.data.mean = (0.4914, 0.4822, 0.4465)  # canonical CIFAR-10's training split (airbench)
    config.data.std = (0.2470, 0.2435, 0.2616)
    return config


# goals, not measured values (see the docstring): issue 22's bound, and for 20 steps a bound well
# below the JPEG copy's 0.512 at that length, which the cleaner original pixels should not miss
EXPECTED = {"accuracy": (">=", 0.935)}
QUICK = {"overrides": JPEG_COPY.QUICK["overrides"], "expected": {"accuracy": (">=", 0.40)}}
