"""A trained run, loaded for notebooks and the CLI: `run = gen_jax.load_run("runs/mnist_vae")`.

A `Run` holds the run's config, its task and the restored state (latest or a chosen checkpoint)
on this machine's devices, whatever number of devices or hosts trained it. Its methods take and
return numpy arrays, in batches; `images`, `encode`, `classify` and `features` speak the model's
input range, `decode` and `sample` return images in [0, 1]:

    run.images("test")            # a split's images (model input range) and labels
    run.class_names               # the names of the labels, as the run recorded them
    run.preprocess(uint8_images)  # your own pictures (any size, gray or color) -> model inputs
    run.to_unit(images)           # model input range -> [0, 1]
    run.encode(images)            # VAE: posterior means and log-variances; diffusion: the noise
                                  # that deterministic DDIM decodes into the images (inversion)
    run.decode(latents)           # VAE: decoded images; GAN, diffusion: generated images
    run.prior(num, seed)          # latents from the prior (VAE), the noise distribution (GAN,
                                  # diffusion: image-shaped)
    run.sample(num, seed)         # decode(prior(num, seed)); diffusion: steps=, sampler=,
                                  # guidance_scale=
    run.trajectory(noise)         # diffusion: every x_t of the sampler's path, noise to image
    run.classify(images)          # classifier: class probabilities
    run.features(images)          # classifier: penultimate activations
    run.evaluate()                # the task's metrics on its eval split; evaluation settings
                                  # may change: run.evaluate(sampler="heun", sample_steps=10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checkpoint, compiled, data, parallel, tasks, train
from gen_jax import config as config_lib
from gen_jax import workdir as workdir_lib
from gen_jax.data.folder import CHANNEL_MODES, conform, from_array
from gen_jax.errors import GenJaxError


class Run:
    """A run's config, task and restored state, with the functions notebooks call."""

    def __init__(self, workdir: str | Path, step: int | None = None):
        self.workdir = Path(workdir)
        self.config, self.task, self.mesh, self.state = workdir_lib.load_state(self.workdir, step)
        self.step = int(self.state.step)
        self.kind = self.config.task.name
        self.low, self.high = data.pixel_range(self.config.data)
        self._compiled: dict[str, Callable] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.workdir)!r}, task={self.kind!r}, step={self.step})"

    def _require(self, ability: str, what: str) -> None:
        """Refuse `what` where the run's family cannot do `ability` (the registry says)."""
        if ability not in tasks.family(self.kind).can:
            able = " or ".join(f"'{name}'" for name in tasks.able(ability)) or "no"
            raise GenJaxError(f"{self.workdir} is a '{self.kind}' run: {what} needs a {able} run")

    def _apply(self, name: str, function: Callable, *arrays: np.ndarray):
        """`function(state, *batches)`, compiled once per run (kept under `name`), over `arrays`
        in batches; the state is an argument, not constants baked into the compiled code."""
        if name not in self._compiled:
            self._compiled[name] = jax.jit(function)
        return data.map_batches(functools.partial(self._compiled[name], self.state), *arrays)

    def to_unit(self, images: np.ndarray) -> np.ndarray:
        """Images in the model's input range mapped to [0, 1], for pictures."""
        return (np.asarray(images) - self.low) / (self.high - self.low)

    # ------------------------------------------------------------------ data
    def images(self, split: str | None = None) -> dict[str, np.ndarray]:
        """`{"image", "label"}` of a split (default: the eval split), in the model's input range."""
        arrays = data.load_split(self.config.data, split or self.config.data.eval_split)
        return data.preprocessor(self.config.data)(arrays)

    @functools.cached_property
    def dataset(self) -> dict:
        """What the run trained on, as it recorded it (`dataset.json`); runs from before that
        record describe their data as it is now."""
        path = self.workdir / "dataset.json"
        if path.is_file():
            return config_lib.read_json(path)
        spec = data.describe(self.config.data)
        return {"image_shape": list(spec.image_shape), "class_names": list(spec.class_names)}

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of labels 0, 1, ... (sorted class folders, or the TFDS label names)."""
        return tuple(self.dataset["class_names"])

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W[, C]) of any size, gray or color, as model inputs: converted to
        the run's channels, resized (shorter side) and centre-cropped to its size when they differ,
        then preprocessed as its data were."""
        height, width, channels = self.dataset["image_shape"]
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise GenJaxError(
                f"preprocess takes uint8 images (N, H, W) or (N, H, W, C), not {images.dtype} "
                f"{images.shape}; e.g. np.asarray(PIL.Image.open(path))[None]"
            )
        if images.shape[1:] != (height, width, channels):
            size = lambda image: 0 if image.shape[:2] == (height, width) else height
            mode = CHANNEL_MODES[channels]
            images = np.stack([conform(from_array(image), mode, size(image)) for image in images])
        return data.preprocessor(self.config.data)({"image": images})["image"]

    # ------------------------------------------------------------------ generative models
    @property
    def latent_dim(self) -> int:
        """Size of a latent (VAE) or noise vector (GAN): of a flat latent."""
        self._require("sample", what="a latent space")
        if len(self.task.latent_shape) != 1:
            raise GenJaxError(
                f"{self.workdir} is a '{self.kind}' run: its latents are {self.task.latent_shape}"
                " arrays, not vectors; use run.prior() for their shape"
            )
        return self.task.latent_shape[0]

    def prior(self, num: int, seed: int = 0) -> np.ndarray:
        """`num` latents from N(0, I), the prior of every generative family: (num, latent_dim),
        or for diffusion noise images (num, H, W, C)."""
        self._require("sample", what="a prior")
        shape = (num, *self.task.latent_shape)
        return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), shape))

    def encode(
        self, images: np.ndarray, labels: np.ndarray | None = None, steps: int | None = None
    ):
        """VAE: posterior means and log-variances (N, latent_dim) of images in the input range.
        Diffusion: the noise (N, H, W, C) that deterministic DDIM decodes into the images in
        `steps` (default task.sample_steps); a conditional model takes one label per image."""
        self._require("encode", what="encode")
        options = self._sampling({"steps": steps})
        encode = lambda state, x, *y: self.task.latents_of(state, x, *y, **options)
        return self._per_example(encode, f"encode_{options}", images, labels)

    def decode(
        self,
        latents: np.ndarray,
        labels: np.ndarray | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Images (N, H, W, C) in [0, 1] made from `latents`: a VAE's decoded images, a GAN's
        (EMA) generator output, a diffusion model's samples from noise `latents` by `sampler` in
        `steps` at `guidance_scale` (defaults: the task's); conditional models take one label
        per latent."""
        self._require("sample", what="decode")
        sampling = self._sampling(
            {"steps": steps, "sampler": sampler, "guidance_scale": guidance_scale}
        )
        generate = lambda state, z, *y: self.task.images_from(state, z, *y, **sampling)
        return self._per_example(generate, f"decode_{sampling}", latents, labels, np.float32)

    def trajectory(
        self,
        noise: np.ndarray,
        labels: np.ndarray | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """A diffusion run's sampling path from `noise` (N, H, W, C): every x_t it visits, noise
        first and the images last, (steps + 1, N, H, W, C), in [0, 1] (clipped) for pictures."""
        self._require("trajectory", what="trajectory")
        sampling = self._sampling(
            {"steps": steps, "sampler": sampler, "guidance_scale": guidance_scale}
        )

        def path(state, z, *y):  # batched along the images, not the times
            return jnp.moveaxis(self.task.path_from(state, z, *y, **sampling), 0, 1)

        visited = self._per_example(path, f"trajectory_{sampling}", noise, labels, np.float32)
        return np.moveaxis(visited, 1, 0)

    def _sampling(self, sampling: dict) -> dict:
        """The sampling settings given (not None), refused where the family has no such
        setting."""
        given = {k: v for k, v in sampling.items() if v is not None}
        unknown = sorted(set(given) - set(self.task.sampling_options))
        if unknown:
            takes = ", ".join(f"{k}=" for k in self.task.sampling_options) or "none"
            raise GenJaxError(
                f"{', '.join(f'{k}=' for k in unknown)}: a '{self.kind}' run takes no such "
                f"sampling setting (it takes: {takes})"
            )
        return given

    def _per_example(self, function: Callable, name: str, arrays, labels, dtype=None):
        """`function(state, arrays[, labels])` in batches; a class-conditional model's labels
        are required, one per row (or one for all)."""
        arrays = np.asarray(arrays, dtype)
        if not self.task.num_classes:
            return self._apply(name, function, arrays)
        if labels is None:
            what = name.split("_")[0]
            raise GenJaxError(f"a class-conditional model's {what} needs labels: pass labels=")
        labels = np.broadcast_to(np.asarray(labels, np.int32), (len(arrays),))
        return self._apply(f"{name}_labelled", function, arrays, labels)

    def sample(
        self, num: int, seed: int = 0, labels: np.ndarray | None = None, **sampling
    ) -> np.ndarray:
        """`num` generated images in [0, 1]; a conditional model cycles through the classes
        unless `labels` are given. A diffusion run takes `steps=`, `sampler=`, `guidance_scale=`."""
        self._require("sample", what="sample")
        if self.task.num_classes and labels is None:
            labels = np.arange(num) % self.task.num_classes
        return self.decode(self.prior(num, seed), labels, **sampling)

    # ------------------------------------------------------------------ classifiers
    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of images in the input range."""
        self._require("classify", what="classify")
        probabilities = lambda state, x: jax.nn.softmax(self.task.logits(state, x))
        return self._apply("classify", probabilities, images)

    def features(self, images: np.ndarray) -> np.ndarray:
        """The classifier's penultimate activations (N, D): the feature space of FID."""
        self._require("classify", what="features")
        return self._apply("features", self.task.features, images)

    # ------------------------------------------------------------------ metrics
    def evaluate(self, final: bool = True, **task_settings) -> dict[str, float]:
        """The task's metrics on its eval split (`final`: the run's reported evaluation), with
        evaluation settings of the task section changed for this call if given (e.g. a diffusion
        run's `sampler="heun", sample_steps=10, final_eval_samples=1000`)."""
        config, task = self.config, self.task
        if task_settings:
            unknown = sorted(set(task_settings) - set(config.task))
            if unknown:
                raise GenJaxError(
                    f"evaluate() got {unknown}, which are not task settings of this run; it has "
                    f"{sorted(config.task)}"
                )
            config = config.copy_and_resolve_references()
            config.task.update(task_settings)
            task = tasks.build(config)
        split = data.get_split(config.data, config.data.eval_split)
        layout = parallel.shardings_of(self.state)
        steps = compiled.compile_steps(task, config, self.mesh, layout, split)
        return {"step": self.step, **steps.evaluate(self.state, final=final)}


def load_run(workdir: str | Path, step: int | None = None) -> Run:
    """Load a run's latest checkpoint (or `step`) on this machine's devices."""
    return Run(workdir, step)


def load_or_train(workdir: str | Path, experiment: str | Path, overrides: list[str] = ()) -> Run:
    """Load the run in `workdir`; where there is none yet, first train `experiment` there with
    `overrides` (e.g. a short run), and where it stopped early, finish it: a notebook always
    executes."""
    saved = Path(workdir) / "config.json"
    if saved.is_file():
        config = config_lib.load(saved)
        finished = checkpoint.latest_step(Path(workdir) / "checkpoints") == config.train.num_steps
    else:
        config = config_lib.load_experiment(experiment)
        config_lib.apply_overrides(config, list(overrides))
        finished = False
    if not finished:
        train.run(config, workdir)
    return Run(workdir)
