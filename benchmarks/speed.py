"""gen_jax's speed on this machine, one table: training loops, baselines, evaluation, compute peak.

    TFDS_DATA_DIR=../shared/data/tensorflow_datasets python benchmarks/speed.py

Every row runs in a fresh process, one after another, on the real MNIST training set:

- matmul peak: a 2048x2048 float32 matmul through jax, the machine's compute limit; divided by
  the CNN's XLA-counted FLOPs per trained example it gives the "fraction of limit" column;
- plain CNN loop: the Flax example's style (numpy batches from memory, a fresh permutation per
  epoch, one jitted step per Python iteration, default allocator, XLA's own CPU settings: its
  convolutions in YNNPACK, which gen_jax leaves out, `gen_jax.host`), the baseline of the ratios;
- PyTorch eager CNN: the same network, optimiser and batch in PyTorch (`pip install
  torch==2.13.0`; the row says so when it is absent);
- gen_jax CNN / MLP VAE / DCGAN: `gen_jax.train.run` of experiments/mnist_cnn.py,
  mnist_vae_mlp.py and mnist_dcgan.py (their own speed options), timed over the logged windows
  after the first (which holds compilation); "first step" is the time of the first call to
  its metrics (what is left of its compile, which `train.run` starts in the background while it
  reads the data), "start-up" the time from calling `train.run` to the first step's metrics;
- gen_jax CNN, fixed batch: the same run fed one batch of images, prepared once, instead of the
  input pipeline (grain's shuffled example indices, the examples gathered on device);
- gen_jax CNN eval: one evaluation of the 10,000 test images after a warm-up one;
- PyTorch eager DCGAN: mnist_dcgan's step (the same two networks, losses, R1 penalty, Adam, EMA
  and batch) in PyTorch, beside the gen_jax DCGAN row;
- gen_jax airbench / PyTorch eager airbench / PyTorch compiled airbench: the CIFAR-10 recipe's
  step (experiments/cifar10_airbench.py: the airbench network at batch 1024, Nesterov SGD, batch
  norm biases at their own rate, label smoothing) on CIFAR-10 (JPEG copy), over `--cifar_steps`
  steps after `--cifar_window` (a step takes seconds); the compiled row is `torch.compile`'s.

Below the table: gen_jax's examples/s over PyTorch's, for the CNN, the DCGAN and airbench.

Peak RSS is each row's whole process (`ru_maxrss`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from common import built, experiment, timings, train_arrays  # this folder; run as a script

ROWS = (
    "matmul peak",
    "plain CNN loop",
    "PyTorch eager CNN",
    "gen_jax CNN",
    "gen_jax CNN, fixed batch",
    "gen_jax CNN eval",
    "gen_jax MLP VAE",
    "gen_jax DCGAN",
    "PyTorch eager DCGAN",
    "gen_jax airbench",
    "PyTorch eager airbench",
    "PyTorch compiled airbench",
)
TORCH_MISSING = "PyTorch not installed: pip install torch==2.13.0"
PLAIN_JAX_ROWS = ("plain CNN loop",)  # with XLA's own CPU settings, not gen_jax's


# ----------------------------------------------------------------------------- rows
def matmul_peak(args) -> dict:
    """GFLOP/s of a 2048x2048 float32 matmul, best of 20."""
    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    matmul = jax.jit(lambda x: x @ x)
    best = min(timings(lambda: matmul(a), repeats=20, warmup=1))
    return {"gflops": 2 * n**3 / best / 1e9}


def plain_cnn_loop(args) -> dict:
    """Examples/s of the plainest JAX loop for the baseline CNN, and its FLOPs per example."""
    import optax
    from flax.training import train_state

    from gen_jax import models

    config = experiment("mnist_cnn", data_dir=args.data_dir)
    images, labels = train_arrays(config)
    batch_size = config.data.batch_size
    model = models.build(config.model)
    params = model.init(jax.random.PRNGKey(0), images[:1])["params"]
    tx = optax.sgd(config.optimizer.learning_rate, momentum=config.optimizer.momentum)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, images, labels):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), loss, (logits.argmax(-1) == labels).mean()

    rng = np.random.default_rng(0)

    def batches():
        while True:
            order = rng.permutation(len(labels))
            for i in range(len(labels) // batch_size):
                index = order[i * batch_size : (i + 1) * batch_size]
                yield images[index], labels[index]

    stream = batches()
    first = next(stream)
    start = time.perf_counter()
    state, loss, _ = train_step(state, *first)
    loss.block_until_ready()
    compile_seconds = time.perf_counter() - start
    for _ in range(args.window):
        state, _, _ = train_step(state, *next(stream))
    jax.block_until_ready(state)
    history = []  # per-step metrics kept on device, fetched at the end, as the Flax example does
    start = time.perf_counter()
    for _ in range(args.steps):
        state, loss, accuracy = train_step(state, *next(stream))
        history.append((loss, accuracy))
    jax.device_get(history)
    rate = args.steps * batch_size / (time.perf_counter() - start)
    flops = train_step.lower(state, *first).compile().cost_analysis()["flops"] / batch_size
    return {"examples_per_second": rate, "first_step": compile_seconds, "flops": flops}


def pytorch_cnn(args) -> dict:
    """Examples/s of the same CNN, SGD and batch in PyTorch eager mode."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return {"skipped": TORCH_MISSING}
    config = experiment("mnist_cnn", data_dir=args.data_dir)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    lr, momentum = config.optimizer.learning_rate, config.optimizer.momentum
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return _torch_rate(step, config, args)


def pytorch_dcgan(args) -> dict:
    """Examples/s of experiments/mnist_dcgan.py's step in PyTorch eager mode: the same networks
    (pixel-shuffle generator with batch norm; norm-free space_to_depth discriminator), the
    non-saturating losses with the R1 penalty, Adam for each player, one discriminator update
    per step, an EMA of the generator, the same batch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return {"skipped": TORCH_MISSING}
    config = experiment("mnist_dcgan", data_dir=args.data_dir)
    model = models_options("dcgan", config)
    noise_dim, size, channels = model["noise_dim"], model["image_size"], model["channels"]
    torch.manual_seed(0)

    def upsample(inputs, outputs):
        conv = nn.Conv2d(inputs, 4 * outputs, 3, padding=1, bias=False)
        return [conv, nn.PixelShuffle(2), nn.BatchNorm2d(outputs, momentum=0.1), nn.LeakyReLU(0.2)]

    features = model["generator_features"]
    start = size // 2 ** (len(features) - 1)
    generator = nn.Sequential(
        nn.Linear(noise_dim, start * start * features[0], bias=False),
        nn.Unflatten(1, (features[0], start, start)),
        nn.BatchNorm2d(features[0], momentum=0.1),
        nn.LeakyReLU(0.2),
        *[layer for a, b in itertools.pairwise(features) for layer in upsample(a, b)],
        nn.Conv2d(features[-1], channels, 3, padding=1),
        nn.Tanh(),
    )
    layers, inputs = [], channels
    for outputs in model["discriminator_features"]:
        same = nn.ZeroPad2d((0, 1, 0, 1))  # XLA's "SAME" for a 2x2 window: one row and column after
        layers += [nn.PixelUnshuffle(2), same, nn.Conv2d(4 * inputs, outputs, 2), nn.LeakyReLU(0.2)]
        inputs = outputs
    final = size // 2 ** len(model["discriminator_features"])
    discriminator = nn.Sequential(*layers, nn.Flatten(), nn.Linear(inputs * final * final, 1))
    players = {"generator.params": generator, "discriminator.params": discriminator}
    _check_same_size(players, config, (size, size, channels))
    ema = copy.deepcopy(generator).requires_grad_(False)
    adam = lambda player, c: torch.optim.Adam(player.parameters(), c.learning_rate, (c.b1, c.b2))
    g_optimizer = adam(generator, config.optimizer.generator)
    d_optimizer = adam(discriminator, config.optimizer.discriminator)
    softplus, r1_weight, decay = (
        nn.functional.softplus,
        config.task.r1_penalty,
        config.task.ema_decay,
    )

    def step(real, _):
        with torch.no_grad():
            fake = generator(torch.randn(len(real), noise_dim))
        real = real.requires_grad_(True)
        real_scores, fake_scores = discriminator(real), discriminator(fake)
        (grads,) = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
        r1 = grads.square().flatten(1).sum(1).mean()
        d_loss = softplus(-real_scores).mean() + softplus(fake_scores).mean() + r1_weight * r1
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimizer.step()
        discriminator.requires_grad_(False)  # the generator's update differentiates G only
        g_loss = softplus(-discriminator(generator(torch.randn(len(real), noise_dim)))).mean()
        g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        g_optimizer.step()
        discriminator.requires_grad_(True)
        with torch.no_grad():
            pairs = zip(ema.state_dict().values(), generator.state_dict().values(), strict=True)
            for average, current in pairs:
                if average.is_floating_point():
                    average.lerp_(current, 1 - decay)
        return d_loss.detach() + g_loss.detach()

    return _torch_rate(step, config, args)


def torch_airbench(config):
    """experiments/cifar10_airbench.py's network and optimizer in PyTorch: a fixed whitening conv
    (its weights for the caller to set from the data), three conv groups with batch norm of
    frozen scale, each conv starting as the identity on its first channels (airbench's), the
    linear head; Nesterov SGD with L2, the batch norm biases at their own rate. Returns (network,
    optimizer, its two parameter groups' base rates); the network's logits are unscaled."""
    import torch
    from torch import nn

    model = models_options("airbench", config)

    def conv(inputs, width):
        layer = nn.Conv2d(inputs, width, 3, padding=1, bias=False)
        nn.init.dirac_(layer.weight.data[: min(inputs, width)])
        return layer

    def norm(width):
        layer = nn.BatchNorm2d(width, momentum=1 - model["batchnorm_momentum"], eps=1e-12)
        layer.weight.requires_grad_(False)  # no scale, as gen_jax's
        return [layer, nn.GELU()]

    def group(inputs, width):
        return [
            conv(inputs, width),
            nn.MaxPool2d(2),
            *norm(width),
            conv(width, width),
            *norm(width),
        ]

    size = model["whitening_size"]
    whitening = nn.Conv2d(3, 2 * size * size * 3, size)  # the patches' eigenvectors and negatives
    whitening.weight.requires_grad_(False)  # computed from the data, not trained
    nn.init.zeros_(whitening.bias)
    widths = (whitening.out_channels, *model["widths"])
    network = nn.Sequential(
        whitening,
        nn.GELU(),
        *[layer for a, b in itertools.pairwise(widths) for layer in group(a, b)],
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(widths[-1], 10, bias=False),
    )
    _check_same_size({"params": network}, config, (32, 32, 3))
    settings = config.optimizer
    biases = [m.bias for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    others = [
        p for p in network.parameters() if p.requires_grad and all(p is not b for b in biases)
    ]
    scale, decay = settings.bias_lr_scale, settings.weight_decay
    rates = (settings.learning_rate, scale * settings.learning_rate)
    optimizer = torch.optim.SGD(
        [
            {"params": others, "lr": rates[0], "weight_decay": decay},
            {"params": biases, "lr": rates[1], "weight_decay": decay / scale},
        ],
        momentum=settings.momentum,
        nesterov=True,
    )
    return network, optimizer, rates


def pytorch_airbench(args, compiled: bool = False) -> dict:
    """Examples/s of experiments/cifar10_airbench.py's step in PyTorch (eager, or `compiled` by
    `torch.compile`): `torch_airbench`'s network and optimizer, label smoothing, the same batch;
    without the random crops and flips, which gen_jax's row does in its step."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return {"skipped": TORCH_MISSING}
    config = experiment("cifar10_airbench", data_dir=args.data_dir)
    torch.manual_seed(0)
    network, optimizer, _ = torch_airbench(config)
    forward = torch.compile(network) if compiled else network
    smoothing, scaling = config.task.label_smoothing, models_options("airbench", config)["scaling"]

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        logits = forward(x) * scaling
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return _torch_rate(step, config, _cifar(args))


def gen_jax_cnn(args) -> dict:
    return gen_jax_training("mnist_cnn", args)


def gen_jax_cnn_fixed_batch(args) -> dict:
    """The gen_jax CNN run with its input pipeline replaced by one batch, repeated."""
    from gen_jax import data

    class FixedBatch:  # the pipeline's first batch forever; nothing to checkpoint
        def __init__(self, iterator):
            self.batch = next(iterator)

        def __next__(self):
            return self.batch

        def get_state(self) -> bytes:  # what grain's checkpoint handler saves of a non-grain one
            return b"{}"

    pipeline = data.train_iterator
    data.train_iterator = lambda *arguments, **options: FixedBatch(pipeline(*arguments, **options))
    return gen_jax_training("mnist_cnn", args, "--config.data.on_device=False")


def gen_jax_cnn_eval(args) -> dict:
    """Seconds to evaluate the 10,000 test images (a trained state's shape: a fresh one)."""
    from gen_jax import compiled, data, parallel
    from gen_jax.tasks.base import init_state

    task, config, mesh, batch, layout = built(experiment("mnist_cnn", data_dir=args.data_dir))
    eval_split = data.get_split(config.data, config.data.eval_split)
    sharding = parallel.shardings_of(layout)
    state = init_state(task, jax.random.PRNGKey(0), batch, out_shardings=sharding)
    steps = compiled.compile_steps(task, config, mesh, sharding, eval_split)
    first, *rest = timings(lambda: steps.evaluate(state), repeats=1 + 5)
    seconds = statistics.median(rest)
    count = len(eval_split)
    return {"examples_per_second": count / seconds, "first_step": first, "seconds": seconds}


def gen_jax_vae(args) -> dict:
    quick_eval = ["--config.task.final_eval_samples=10", "--config.task.eval_sample_chunk=10"]
    return gen_jax_training("mnist_vae_mlp", args, "--config.train.eval_every=0", *quick_eval)


def gen_jax_dcgan(args) -> dict:
    return gen_jax_training(
        "mnist_dcgan", args, "--config.task.classifier_workdir=", "--config.train.eval_every=0"
    )


def gen_jax_airbench(args) -> dict:
    """The recipe's run, without its warm-up (longer than the row's steps) and its final
    evaluation without the test-time augmentations."""
    overrides = [
        "--config.optimizer.warmup_steps=0",
        "--config.task.test_flips=False",
        "--config.task.test_shift=0",
    ]
    return gen_jax_training("cifar10_airbench", _cifar(args), *overrides)


MEASURE = dict(
    zip(
        ROWS,
        (
            matmul_peak,
            plain_cnn_loop,
            pytorch_cnn,
            gen_jax_cnn,
            gen_jax_cnn_fixed_batch,
            gen_jax_cnn_eval,
            gen_jax_vae,
            gen_jax_dcgan,
            pytorch_dcgan,
            gen_jax_airbench,
            pytorch_airbench,
            functools.partial(pytorch_airbench, compiled=True),
        ),
        strict=True,
    )
)


# ----------------------------------------------------------------------------- helpers
def _cifar(args):
    """`args` with the CIFAR rows' step counts."""
    return argparse.Namespace(
        **{**vars(args), "steps": args.cifar_steps, "window": args.cifar_window}
    )


def models_options(name: str, config) -> dict:
    """The model's settings: its defaults, then the experiment's."""
    from gen_jax import models

    return models.options(name) | config.model.to_dict()


def _check_same_size(networks: dict, config, shape: tuple[int, ...]) -> None:
    """Refuse PyTorch networks whose trainable parameter counts differ from the experiment's:
    `networks` maps where the parameters sit in the training state ("generator.params") to the
    PyTorch module."""
    import operator

    import jax.numpy as jnp

    from gen_jax import tasks

    config.task.classifier_workdir = ""
    size = config.data.batch_size
    example = {"image": jnp.zeros((size, *shape)), "label": jnp.zeros(size, jnp.int32)}
    state = jax.eval_shape(tasks.build(config).init, jax.random.PRNGKey(0), example)
    for where, network in networks.items():
        ours = sum(x.size for x in jax.tree.leaves(operator.attrgetter(where)(state)))
        theirs = sum(p.numel() for p in network.parameters() if p.requires_grad)
        if ours != theirs:
            raise RuntimeError(f"PyTorch's {where} has {theirs:,} parameters, gen_jax's {ours:,}")


def _torch_rate(step, config, args) -> dict:
    """Examples/s of `step(images, labels)` in PyTorch over shuffled NCHW batches of the
    experiment's training set: `window` untimed steps, then `steps` timed ones."""
    import torch

    images, labels = train_arrays(config)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NCHW
    labels = torch.from_numpy(labels).long()
    batch_size = config.data.batch_size
    generator = torch.Generator().manual_seed(0)

    def batches():
        while True:
            order = torch.randperm(len(labels), generator=generator)
            for i in range(len(labels) // batch_size):
                index = order[i * batch_size : (i + 1) * batch_size]
                yield images[index], labels[index]

    stream = batches()
    start = time.perf_counter()
    step(*next(stream))
    first = time.perf_counter() - start
    for _ in range(args.window):
        step(*next(stream))
    start = time.perf_counter()
    losses = [step(*next(stream)) for _ in range(args.steps)]
    torch.stack(losses).sum().item()
    rate = args.steps * batch_size / (time.perf_counter() - start)
    return {"examples_per_second": rate, "first_step": first, "threads": torch.get_num_threads()}


def gen_jax_training(name: str, args, *overrides: str) -> dict:
    """`train.run` of an experiment for `window` + `steps` steps, as `gen-jax train` sets up:
    mean examples/s over the windows after the first, the first step's seconds and the start-up's
    (also the timing of benchmarks/streaming.py)."""
    from gen_jax import host, train
    from gen_jax.metric_writer import read_metrics

    host.keep_freed_memory_in_heap()
    total = args.window + args.steps
    config = experiment(
        name,
        [
            f"--config.train.num_steps={total}",
            f"--config.train.log_every={args.window}",
            f"--config.train.checkpoint_every={total}",
            *overrides,
        ],
        data_dir=args.data_dir,
    )
    with tempfile.TemporaryDirectory() as workdir:
        train.run(config, workdir)
        records = read_metrics(workdir)
    rates = [
        r["value"]
        for r in records
        if r["name"] == "examples_per_second" and r["step"] > args.window
    ]
    first = {r["name"]: r["value"] for r in records if r["step"] == records[0]["step"]}
    return {
        "examples_per_second": statistics.fmean(rates),
        "first_step": first["first_step_seconds"],
        "startup": first["startup_seconds"],
    }


# ----------------------------------------------------------------------------- table
def xla_defaults() -> None:
    """Give this process XLA's own CPU settings in place of gen_jax's (`gen_jax.host`): a plain
    JAX loop has them. Before JAX starts its backends."""
    from gen_jax import host

    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = flags.replace(host.GEN_JAX_YNN_FUSIONS, host.XLA_YNN_FUSIONS)


def measure_in_fresh_process(row: str) -> dict:
    command = [sys.executable, __file__, "--row", row, *sys.argv[1:]]
    output = subprocess.run(command, capture_output=True, text=True)
    if output.returncode:
        return {"skipped": f"failed: {output.stderr.strip().splitlines()[-1]}"}
    return json.loads(output.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    plain = results["plain CNN loop"]
    limit = results["matmul peak"]["gflops"] * 1e9 / plain["flops"]  # CNN examples/s
    lines = [
        f"CNN compute limit: {results['matmul peak']['gflops']:.0f} GFLOP/s matmul peak / "
        f"{plain['flops'] / 1e6:.1f} MFLOP per trained example = {limit:,.0f} examples/s",
        "",
        "| row | examples/s | ratio to plain CNN loop | fraction of CNN limit | first step (s) "
        "| start-up (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS[1:]:
        result = results[row]
        if "skipped" in result:
            lines.append(f"| {row} | {result['skipped']} | | | | | |")
            continue
        rate = result["examples_per_second"]
        cnn = "CNN" in row and "eval" not in row
        ratio = f"{rate / plain['examples_per_second']:.2f}" if cnn else ""
        fraction = f"{rate / limit:.0%}" if cnn else ""
        extra = f" ({result['seconds']:.2f} s for 10k)" if "seconds" in result else ""
        startup = f"{result['startup']:.2f}" if "startup" in result else ""
        lines.append(
            f"| {row} | {rate:,.0f}{extra} | {ratio} | {fraction} | {result['first_step']:.2f} "
            f"| {startup} | {result['peak_rss_mib']:,.0f} |"
        )
    pairs = {
        "CNN": ("gen_jax CNN", "PyTorch eager CNN"),
        "DCGAN": ("gen_jax DCGAN", "PyTorch eager DCGAN"),
        "airbench": ("gen_jax airbench", "PyTorch eager airbench"),
        "airbench (compiled)": ("gen_jax airbench", "PyTorch compiled airbench"),
    }
    rate = lambda row: results[row]["examples_per_second"]
    ratios = [
        f"{name} {rate(ours) / rate(theirs):.2f}x"
        for name, (ours, theirs) in pairs.items()
        if "skipped" not in results[ours] and "skipped" not in results[theirs]
    ]
    if ratios:
        lines += ["", "gen_jax / PyTorch, examples/s: " + ", ".join(ratios)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="", help="TFDS directory (default $TFDS_DATA_DIR)")
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per training row")
    parser.add_argument("--window", type=int, default=100, help="untimed first steps")
    parser.add_argument("--cifar_steps", type=int, default=20, help="timed steps per CIFAR row")
    parser.add_argument("--cifar_window", type=int, default=3, help="its untimed first steps")
    parser.add_argument("--row", choices=ROWS, help="measure one row here and print it as JSON")
    args = parser.parse_args()
    if args.row:
        if args.row in PLAIN_JAX_ROWS:
            xla_defaults()
        result = MEASURE[args.row](args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    from gen_jax.provenance import hardware

    results = {row: measure_in_fresh_process(row) for row in ROWS}
    print(f"jax {jax.__version__}, {args.steps} timed steps per training row, one CPU device")
    print(f"CPU: {hardware()}")
    print(table(results))


if __name__ == "__main__":
    main()
