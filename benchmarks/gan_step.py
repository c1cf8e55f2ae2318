"""GAN train-step speed on this machine, and why the critic steps are a Python loop, not a scan.

    python benchmarks/gan_step.py [EXPERIMENT ...] [--config.KEY=VALUE ...]

Table 1: the compiled train step of each GAN experiment (its own batch, model and loss; zero
images, no classifier), ms per step and real images per second; with overrides, each experiment
is timed again with them applied, and the ratio to its own step is shown, e.g.
`python benchmarks/gan_step.py mnist_dcgan --config.model.generator_features=(256,128,64)`.
Table 2: five WGAN-GP critic updates (the DCGAN critic with layer norm, gradient penalty, Adam)
run as `jax.lax.scan` over the five slices or as a Python loop unrolled at trace time (what
`GANTask.critic_updates` does).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import optax
from common import experiment, timings  # this folder; run as a script

from gen_jax import config as config_lib
from gen_jax import tasks
from gen_jax.host import keep_freed_memory_in_heap
from gen_jax.models.dcgan import dcgan
from gen_jax.tasks.base import init_state
from gen_jax.tasks.gan_losses import gradient_penalty

EXPERIMENTS = ("mnist_dcgan", "mnist_hinge_gan", "mnist_cgan", "mnist_wgan_gp")


def seconds_per_call(function, *args, repeats: int = 10) -> tuple[float, float]:
    """(first call incl. compilation, mean of `repeats` further calls back to back), in seconds."""
    (first,) = timings(lambda: function(*args))
    (mean,) = timings(lambda: function(*args), repeats, back_to_back=True)
    return first, mean


def experiment_step(name: str, overrides: list[str]) -> tuple[int, float, float]:
    """(batch size, first-step seconds, seconds per step) of an experiment's train step with
    `overrides` (`--config.KEY=VALUE` strings) applied."""
    config = experiment(name, overrides)
    config.task.classifier_workdir = ""
    task = tasks.build(config)
    size = config.data.batch_size
    batch = {"image": jnp.zeros((size, 28, 28, 1)), "label": jnp.zeros(size, jnp.int32)}
    state = init_state(task, jax.random.PRNGKey(0), batch)
    step = jax.jit(lambda state: task.train_step(state, batch)[0])
    return size, *seconds_per_call(step, state)


def critic_loops(steps: int = 5, size: int = 64) -> dict[str, float]:
    """Seconds for `steps` WGAN-GP critic updates, as a scan and as an unrolled loop."""
    critic = dcgan(discriminator_norm="layer").discriminator
    optimizer = optax.adam(1e-4, b1=0.5, b2=0.9)
    images = jax.random.normal(jax.random.PRNGKey(0), (steps, size, 28, 28, 1))
    params = critic.init(jax.random.PRNGKey(1), images[0])["params"]
    keys = jax.random.split(jax.random.PRNGKey(2), steps)

    def update(carry, inputs):
        params, opt_state = carry
        real, key = inputs
        fake = jnp.flip(real, 0)

        def loss(params):
            score = lambda x: critic.apply({"params": params}, x)
            wasserstein = jnp.mean(score(fake) - score(real))
            return wasserstein + 10.0 * gradient_penalty(score, real, fake, key)

        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def scanned(params):
        return jax.lax.scan(update, (params, optimizer.init(params)), (images, keys))[0]

    def unrolled(params):
        carry = (params, optimizer.init(params))
        for i in range(steps):
            carry, _ = update(carry, (images[i], keys[i]))
        return carry

    return {
        name: seconds_per_call(jax.jit(loop), params, repeats=3)[1]
        for name, loop in (("lax.scan", scanned), ("unrolled Python loop", unrolled))
    }


def _row(label: str, size: int, first: float, per_step: float, baseline: float) -> str:
    speed = f"{per_step * 1e3:.0f} | {size / per_step:,.0f} | {per_step / baseline:.2f}"
    return f"| {label} | {size} | {first:.2f} | {speed} |"


def main(args: list[str]) -> None:
    overrides = [a for a in args if a.startswith(config_lib.OVERRIDE_PREFIX)]
    names = [a for a in args if a not in overrides] or EXPERIMENTS
    keep_freed_memory_in_heap()  # as `gen-jax train` does
    print("| experiment | batch | first step (s) | ms / step | real images / s | ratio |")
    print("|---|---|---|---|---|---|")
    for name in names:
        size, first, own = experiment_step(name, [])
        print(_row(name, size, first, own, own))
        if overrides:
            size, first, per_step = experiment_step(name, overrides)
            print(_row(f"{name} {' '.join(overrides)}", size, first, per_step, own))
    loops = critic_loops()
    unrolled = loops["unrolled Python loop"]
    print("\n| 5 WGAN-GP critic updates, batch 64 | ms | ratio to unrolled |")
    print("|---|---|---|")
    for name, seconds in loops.items():
        print(f"| {name} | {seconds * 1e3:.0f} | {seconds / unrolled:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
