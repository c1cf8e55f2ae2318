"""The feature spaces that generated images are scored in, built apart from the tasks.

- `ClassifierRun`: a finished gen_jax classifier run, frozen. Its penultimate activations are the
  features and its softmax the class probabilities, so it also gives an Inception-Score-style
  score and a class histogram. Cheap, and called inside a task's compiled eval step. Its numbers
  compare gen_jax runs with each other only.
- `Inception`: the FID Inception-v3 of the papers (`gen_jax.inception`), under NVlabs' protocol.
  Its 2048-d features make FID, KID and precision/recall comparable with published numbers. It
  has no class probabilities: the FID network stops at the pool features, and the papers' IS
  comes from the 1008-way logits of another graph, so the Inception Score stays in the
  classifier's space. It runs outside the compiled eval step, batched and sharded over the mesh,
  and caches the real sets' features (`reference_features`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import checkpoint, data, inception, parallel, tasks
from gen_jax import config as config_lib
from gen_jax.atomic import write_atomically
from gen_jax.data.folder import user_cache_root
from gen_jax.errors import GenJaxError
from gen_jax.sample_quality import reference_rows

REFERENCE_SLICE = 1000  # real images whose features are saved at once: a kill loses one slice


# ----------------------------------------------------------------------------- a classifier run
def check_classifier_run(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config of the classifier run in `workdir`; a clear error if there is none."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise GenJaxError(
            f"task.classifier_workdir {workdir} holds no finished run (no config.json); "
            "train one first: gen-jax train experiments/mnist_cnn.py --workdir runs/mnist_cnn"
        )
    config = config_lib.load(workdir / "config.json")
    if "classify" not in tasks.family(config.task.name).can:
        raise GenJaxError(
            f"task.classifier_workdir {workdir} is a '{config.task.name}' run, not a classifier"
        )
    return config


class ClassifierRun:
    """A finished classifier run, frozen: images -> (features, class probabilities).

    `input_data` is the data section of the images it will be given (e.g. a GAN's, in [-1, 1]);
    they are mapped to the pixel range the classifier was trained on. The checkpoint is restored
    on first use, for the images' shape.
    """

    def __init__(self, workdir: str | Path, input_data: ml_collections.ConfigDict):
        self.workdir = Path(workdir)
        self.config = check_classifier_run(self.workdir)
        self.task = tasks.build(self.config)  # a family that can classify
        low, high = data.pixel_range(input_data)
        self.target_low, self.target_high = data.pixel_range(self.config.data)
        self.scale = (self.target_high - self.target_low) / (high - low)
        self.shift = self.target_low - low * self.scale
        self._restored: dict[tuple[int, ...], tuple[dict, int]] = {}

    def restore(self, image_shape: tuple[int, ...]) -> tuple[dict, int]:
        """The classifier's variables (host copies) and step, for images of `image_shape`."""
        image_shape = tuple(image_shape)
        if image_shape not in self._restored:
            with jax.ensure_compile_time_eval():  # may be first called inside a traced step
                self._restored[image_shape] = self._restore(image_shape)
        return self._restored[image_shape]

    def _restore(self, image_shape: tuple[int, ...]) -> tuple[dict, int]:
        example = {"image": jnp.zeros((1, *image_shape)), "label": jnp.zeros((1,), jnp.int32)}
        abstract = jax.eval_shape(self.task.init, jax.random.PRNGKey(0), example)
        checkpointer = checkpoint.Checkpointer(self.workdir / "checkpoints")
        try:
            step = checkpointer.latest_step()
            if step != self.config.train.num_steps:  # a run still training would shift features
                raise GenJaxError(
                    f"the classifier run in {self.workdir} has not finished (latest checkpoint: "
                    f"step {step} of {self.config.train.num_steps}); finish it with the same "
                    "`gen-jax train` command"
                )
            abstract = parallel.placed(abstract, parallel.replicated(parallel.make_mesh()))
            state, _ = checkpointer.restore(abstract, step=step)
        finally:
            checkpointer.close()
        local = lambda x: np.asarray(x.addressable_data(0))  # a host copy on every process
        variables = jax.tree.map(local, {"params": state.params, "batch_stats": state.batch_stats})
        return variables, int(local(state.step))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features (B, D) and class probabilities (B, classes) in inference mode (jit-able)."""
        variables, _ = self.restore(images.shape[1:])
        images = jnp.clip(images * self.scale + self.shift, self.target_low, self.target_high)
        features, logits = self.task.features_and_logits(variables, images)
        return features, jax.nn.softmax(logits)


# ----------------------------------------------------------------------------- Inception
def _progress(total: int, what: str):
    from tqdm import tqdm

    quiet = jax.process_index() != 0 or not what
    return tqdm(total=total, desc=what, unit="img", disable=quiet, file=sys.stderr)


class Inception:
    """The FID Inception-v3: uint8 images (N, H, W, 1 or 3) -> (N, 2048) features, in batches of
    `batch_size` split over every device of the run's mesh."""

    def __init__(self, weights: str | Path | None = None, batch_size: int = 100):
        self.params_host = inception.load_params(weights)
        self.mesh = parallel.make_mesh()
        devices = self.mesh.devices.size
        self.batch_size = -(-batch_size // devices) * devices

    @functools.cached_property
    def _compiled(self):
        replicated, sharded = parallel.replicated(self.mesh), parallel.data_sharded(self.mesh)
        params = jax.device_put(self.params_host, replicated)
        call = jax.jit(
            lambda p, x: inception.features(p, x.astype(jnp.float32) / 255.0),
            in_shardings=(replicated, sharded),
            out_shardings=replicated,
        )
        host_copy = lambda x: np.asarray(x.addressable_data(0))
        return lambda images: host_copy(call(params, images)), sharded

    def features(self, images: np.ndarray, progress: str = "") -> np.ndarray:
        """Features of every image; `progress` names a progress bar (process 0, stderr)."""
        images = check_images(images)
        call, sharding = self._compiled
        devices = self.mesh.devices.size
        parts = []
        with _progress(len(images), progress) as bar:
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                size = -(-len(chunk) // devices) * devices  # the last batch: padded to the mesh
                parts.append(call(_global_rows(chunk, size, sharding))[: len(chunk)])
                bar.update(len(chunk))
        return np.concatenate(parts)


def _global_rows(rows: np.ndarray, size: int, sharding) -> jax.Array:
    """`rows` (the same on every process) padded to `size` by repeating the last one, as one
    array sharded over the mesh."""
    padded = np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), 0)])
    return jax.make_array_from_callback(padded.shape, sharding, lambda index: padded[index])


def check_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 images with C 1 or 3, or a clear error saying what was given."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise GenJaxError(
            f"expected images shaped (N, height, width, 1 or 3), got {images.shape}: gray or RGB"
        )
    if images.dtype != np.uint8:
        raise GenJaxError(
            f"expected uint8 images (0-255), got {images.dtype}: quantise them first, e.g. "
            "np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) for images in [0, 1]"
        )
    return images


def to_levels(images: jax.Array, low, high) -> jax.Array:
    """Images in [low, high] (a data section's pixel range) -> uint8 levels, as saved pictures."""
    unit = (jnp.asarray(images, jnp.float32) - low) / (high - low)
    return jnp.round(jnp.clip(unit, 0.0, 1.0) * 255.0).astype(jnp.uint8)


# ----------------------------------------------------------------------------- real features
def reference_features(
    space: Inception, data_config: ml_collections.ConfigDict, split: str, count: int = 0
) -> np.ndarray:
    """The Inception features of `count` images of a dataset split (0: all), computed once and
    cached by the split's identity (TFDS name, version and split, or the hash of the images a
    folder decodes to) and the protocol; saved in slices, so a stopped computation resumes."""
    source = data.open_split(data_config, split)
    rows = reference_rows(len(source), count)
    described = {"split": source.identity, "rows": len(rows), "of": len(source)}
    key = json.dumps({**described, "protocol": inception.PROTOCOL}, sort_keys=True)
    folder = user_cache_root() / "inception" / "reference"
    final = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
    if _on_every_process(final):
        return np.load(final)
    parts = []
    what = f"Inception features of {split} ({len(rows)} images)"
    for start in range(0, len(rows), REFERENCE_SLICE):
        part = final.with_suffix(f".part{start:07d}.npy")
        if _on_every_process(part):
            parts.append(np.load(part))
            continue
        images = source.read(rows[start : start + REFERENCE_SLICE])["image"]
        parts.append(space.features(images, progress=f"{what}, from {start}"))
        if jax.process_index() == 0:
            _save(part, parts[-1])
    features = np.concatenate(parts)
    if jax.process_index() == 0:
        _save(final, features)
        final.with_suffix(".json").write_text(json.dumps(json.loads(key), indent=1))
        for start in range(0, len(rows), REFERENCE_SLICE):
            final.with_suffix(f".part{start:07d}.npy").unlink(missing_ok=True)
    return features


def _on_every_process(path: Path) -> bool:
    """Whether every process of the run finds the file (each host may have its own cache):
    computing features is a collective, so all of them read it or none does."""
    if jax.process_count() == 1:
        return path.is_file()
    from jax.experimental import multihost_utils

    found = multihost_utils.process_allgather(np.array(path.is_file()))
    return bool(np.all(found))


def _save(path: Path, array: np.ndarray) -> None:
    write_atomically(path, lambda file: np.save(file, array))
