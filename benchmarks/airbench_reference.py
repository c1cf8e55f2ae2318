"""experiments/cifar10_airbench.py's recipe run by airbench's own training procedure in PyTorch,
on the same images: does the gen_jax recipe train as the reference implementation does?

    python benchmarks/airbench_reference.py --epochs 3 [--seed 0]

The procedure of KellerJordan/cifar10-airbench's legacy/airbench94.py, written again here for a
CPU in float32, with the recipe's hyperparameters and data (CIFAR-10, JPEG copy, as the recipe
reads it): whitening weights from 5,000 training images' 2x2 patches (airbench's first 5,000;
a random sample here, as the folder's come sorted by class); the images flipped once at random,
then all of them in odd epochs, cropped at random from a reflection padding each epoch, shuffled,
the last partial batch dropped; the label-smoothed loss (its mean at the recipe's rate, which is
airbench's sum at its rate); warm-up and linear decay over the run; lookahead every 5 steps
over the weights *and* the batch norm statistics; the whitening bias trained for the recipe's
`optimizer.freeze_at` steps, checked at each epoch's start. Prints each epoch's test accuracy and
the final one with airbench's test-time augmentation (flips, 1-pixel shifts; logits averaged).
Compare with `gen-jax train experiments/cifar10_airbench.py` for the same number of epochs
(`--config.train.num_steps`, warm-up and freeze scaled alike). PyTorch is needed.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import experiment, train_arrays  # this folder; run as a script
from speed import models_options, torch_airbench

WHITENING_IMAGES = 5000
LOOKAHEAD_EVERY = 5
CHANNELS_LAST = torch.channels_last  # PyTorch's CPU convolutions: ~1.6x faster than NCHW here


def whitening_weights(images: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    """The (2 * size^2 * C, C, size, size) weights: the patches' second-moment eigenvectors
    scaled by 1 / sqrt(eigenvalue + eps), largest first, then their negatives."""
    channels = images.shape[1]
    patches = images.unfold(2, size, 1).unfold(3, size, 1).transpose(1, 3)
    flat = patches.reshape(-1, channels * size * size)
    values, vectors = torch.linalg.eigh(flat.T @ flat / len(flat))
    scaled = (
        vectors.T.reshape(-1, channels, size, size) / torch.sqrt(values + eps)[:, None, None, None]
    )
    scaled = scaled.flip(0)
    return torch.cat([scaled, -scaled])


def random_crops(padded: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Each image's size x size window at a uniform offset within its padding."""
    pad = (padded.shape[-1] - size) // 2
    offsets = torch.randint(0, 2 * pad + 1, (len(padded), 2), generator=generator)
    out = torch.empty((*padded.shape[:2], size, size))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            mask = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[mask] = padded[mask, :, dy : dy + size, dx : dx + size]
    return out


@torch.no_grad()
def accuracy(network, images, labels, augmented: bool) -> float:
    """Test accuracy in evaluation mode; `augmented`: airbench's test-time augmentation."""
    network.eval()

    def mirrored(x):
        return (network(x) + network(x.flip(-1))) / 2

    correct = 0
    for x, y in zip(images.split(1000), labels.split(1000), strict=True):
        x = x.contiguous(memory_format=CHANNELS_LAST)
        if augmented:
            padded = F.pad(x, (1,) * 4, "reflect")
            shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
            logits = mirrored(x) / 2 + (mirrored(shifted[0]) + mirrored(shifted[1])) / 4
        else:
            logits = network(x)
        correct += (logits.argmax(1) == y).sum().item()
    network.train()
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=3.0, help="airbench94 trains 9.9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default="", help="TFDS directory (unused by folder data)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    config = experiment("cifar10_airbench", data_dir=args.data_dir)
    model, settings = models_options("airbench", config), config.optimizer

    def nchw(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = train_arrays(config, split)
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return images, torch.from_numpy(labels).long()

    images, labels = nchw(config.data.train_split)
    test_images, test_labels = nchw(config.data.eval_split)
    network, optimizer, rates = torch_airbench(config)
    network = network.to(memory_format=CHANNELS_LAST)
    whitening = network[0]
    sample = torch.randperm(len(images), generator=generator)[:WHITENING_IMAGES]  # all classes
    whitening.weight.data[:] = whitening_weights(
        images[sample], model["whitening_size"], model["whitening_eps"]
    )

    batch = config.data.batch_size
    epoch_steps = len(images) // batch
    total = math.ceil(epoch_steps * args.epochs)
    warmup = int(settings.warmup_steps / config.train.num_steps * total)

    def rate_factor(step: int) -> float:
        if step < warmup:
            return np.interp(step, [0, warmup], [settings.warmup_from, 1.0])
        return np.interp(step, [warmup, total], [1.0, settings.end_fraction])

    slow = {k: v.clone() for k, v in network.state_dict().items()}

    def lookahead(decay: float) -> None:
        for kept, current in zip(slow.values(), network.state_dict().values(), strict=True):
            if current.is_floating_point():
                kept.lerp_(current, 1 - decay)
                current.copy_(kept)

    flipped = torch.where(
        torch.rand(len(images), generator=generator)[:, None, None, None] < 0.5,
        images.flip(-1),
        images,
    )
    padded = F.pad(flipped, (config.data.crop_padding,) * 4, "reflect")
    scaling, smoothing = model["scaling"], config.task.label_smoothing
    step, start = 0, time.perf_counter()
    print("| epoch | steps | train loss | test accuracy | seconds |\n|---|---|---|---|---|")
    for epoch in range(math.ceil(args.epochs)):
        whitening.bias.requires_grad_(step < settings.freeze_at)  # checked at epochs' starts
        epoch_images = random_crops(padded, images.shape[-1], generator)
        if epoch % 2:
            epoch_images = epoch_images.flip(-1)
        order = torch.randperm(len(images), generator=generator)
        for i in range(epoch_steps):
            index = order[i * batch : (i + 1) * batch]
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = rate * rate_factor(step)
            inputs = epoch_images[index].contiguous(memory_format=CHANNELS_LAST)
            logits = network(inputs) * scaling
            loss = F.cross_entropy(logits, labels[index], label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % LOOKAHEAD_EVERY == 0:
                lookahead(settings.lookahead_decay * (step / total) ** 3)
            if step == total:
                lookahead(1.0)
                break
        test = accuracy(network, test_images, test_labels, augmented=False)
        seconds = time.perf_counter() - start
        print(f"| {epoch} | {step} | {loss.item():.4f} | {test:.4f} | {seconds:.0f} |")
    final = accuracy(network, test_images, test_labels, augmented=True)
    print(f"\nfinal test accuracy with test-time augmentation: {final:.4f} ({total} steps)")


if __name__ == "__main__":
    main()
