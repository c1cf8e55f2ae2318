"""Sample quality in the feature space of a trained gen_jax classifier.

Fréchet distance (FID), an Inception-Score-style score from the class probabilities, improved
precision and recall (Kynkäänniemi et al., 2019: k-NN balls around each set's points) and the
class histogram of generated images. The classifier is any finished classifier run (e.g.
`experiments/mnist_cnn.py`): its penultimate activations are the features, its softmax the
class probabilities. The metrics are plain numpy functions of feature arrays; only feature
extraction runs under jit.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import checkpoint, data, parallel
from gen_jax import config as config_lib
from gen_jax.errors import GenJaxError
from gen_jax.tasks.classifier import ClassifierTask

DISTANCE_CHUNK = 1000  # rows of a pairwise-distance matrix computed at once


# ----------------------------------------------------------------------------- the math
def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2) between Gaussians fitted to (N, D) sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (C_a C_b)^1/2 = sum of the square roots of the eigenvalues of the PSD S C_b S, S = C_a^1/2
    root = _sqrt_psd(cov_a)
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0.0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


def inception_score(probs: np.ndarray) -> float:
    """exp E_x KL(p(y|x) || p(y)): 1 for uniform predictions, the class count at best."""
    probs = np.asarray(probs, np.float64)
    marginal = probs.mean(0)
    log_ratio = np.log(np.clip(probs, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))
    return float(np.exp(np.mean(np.sum(probs * log_ratio, axis=1))))


def class_histogram(probs: np.ndarray) -> np.ndarray:
    """The fraction of images whose most probable class is each class."""
    counts = np.bincount(np.argmax(probs, axis=1), minlength=probs.shape[1])
    return counts / len(probs)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point of the set."""
    radii = []
    for start in range(0, len(points), DISTANCE_CHUNK):
        distances = _squared_distances(points[start : start + DISTANCE_CHUNK], points)
        radii.append(np.partition(distances, k, axis=1)[:, k])  # column 0 is the point itself
    return np.concatenate(radii)


def coverage(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> float:
    """The fraction of `points` inside at least one k-NN ball of the `manifold` set."""
    inside = [
        np.any(_squared_distances(points[start : start + DISTANCE_CHUNK], manifold) <= radii, 1)
        for start in range(0, len(points), DISTANCE_CHUNK)
    ]
    return float(np.mean(np.concatenate(inside)))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: fake points on the real manifold; recall: real points on the fake manifold."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def score(real_features, real_probs, fake_features, fake_probs, k: int = 3) -> dict[str, float]:
    """Every metric of a generated set against a real one."""
    histogram = class_histogram(fake_probs)
    precision, recall = precision_recall(real_features, fake_features, k)
    return {
        "fid": frechet_distance(real_features, fake_features),
        "inception_score": inception_score(fake_probs),
        "precision": precision,
        "recall": recall,
        "classes_covered": float(np.sum(histogram > 0)),
        "min_class_fraction": float(histogram.min()),
        **{f"class_{label}_fraction": float(f) for label, f in enumerate(histogram)},
    }


# ----------------------------------------------------------------------------- the classifier
def check_classifier_run(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config of the classifier run in `workdir`; a clear error if there is none."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise GenJaxError(
            f"task.classifier_workdir {workdir} holds no finished run (no config.json); "
            "train one first: gen-jax train experiments/mnist_cnn.py --workdir runs/mnist_cnn"
        )
    config = config_lib.load(workdir / "config.json")
    if config.task.name != "classifier":
        raise GenJaxError(
            f"task.classifier_workdir {workdir} is a '{config.task.name}' run, not a classifier"
        )
    return config


class FeatureClassifier:
    """A finished classifier run, frozen: images -> (features, class probabilities).

    `input_data` is the data section of the images it will be given (e.g. a GAN's, in [-1, 1]);
    they are mapped to the pixel range the classifier was trained on.
    """

    def __init__(
        self,
        workdir: str | Path,
        image_shape: tuple[int, ...],
        input_data: ml_collections.ConfigDict,
    ):
        workdir = Path(workdir)
        config = check_classifier_run(workdir)
        task = ClassifierTask(config)
        example = {"image": jnp.zeros((1, *image_shape)), "label": jnp.zeros((1,), jnp.int32)}
        abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0), example)
        checkpointer = checkpoint.Checkpointer(workdir / "checkpoints")
        try:
            step = checkpointer.latest_step()
            if step != config.train.num_steps:  # a run still training would shift the features
                raise GenJaxError(
                    f"the classifier run in {workdir} has not finished (latest checkpoint: step "
                    f"{step} of {config.train.num_steps}); finish it with the same `gen-jax "
                    "train` command"
                )
            abstract = parallel.replicate(abstract, parallel.make_mesh())
            state, _ = checkpointer.restore(abstract, step=step)
        finally:
            checkpointer.close()
        local = lambda x: np.asarray(x.addressable_data(0))  # a host copy on every process
        self.variables = jax.tree.map(
            local, {"params": state.params, "batch_stats": state.batch_stats}
        )
        self.task, self.step = task, int(local(state.step))
        low, high = data.pixel_range(input_data)
        self.target_low, self.target_high = data.pixel_range(config.data)
        self.scale = (self.target_high - self.target_low) / (high - low)
        self.shift = self.target_low - low * self.scale

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features (B, D) and class probabilities (B, classes) in inference mode (jit-able)."""
        images = jnp.clip(images * self.scale + self.shift, self.target_low, self.target_high)
        features, logits = self.task.features_and_logits(self.variables, images)
        return features, jax.nn.softmax(logits)


# ----------------------------------------------------------------------------- a task's scores
SKIPPED_METRICS = (
    "gen-jax: task.classifier_workdir is empty, so FID / IS / precision / recall are skipped. "
    "Train a classifier (gen-jax train experiments/mnist_cnn.py --workdir runs/mnist_cnn) and "
    "pass --config.task.classifier_workdir=runs/mnist_cnn to score samples."
)


def check_sample_count(neighbours: int, samples: int, what: str) -> None:
    """Refuse a number of samples to score that leaves the k-NN manifolds no neighbours."""
    if not 0 < neighbours < samples:
        raise GenJaxError(
            f"task.neighbours {neighbours} must be at least 1 and below {what} {samples}: the "
            "k-NN manifolds of precision and recall need k + 1 points"
        )


class SampleScorer:
    """How every generative family that samples is scored: its generated images in the features
    of a finished classifier run against the real eval split, beside the same scores of as many
    real training images (the floor), and the FID as a multiple of the floor's, so that a goal in
    those terms holds whichever classifier scores."""

    def __init__(
        self,
        classifier_workdir: str | Path,
        image_shape: tuple[int, ...],
        data_config: ml_collections.ConfigDict,
        neighbours: int,
        seed: int,
    ):
        self.workdir, self.image_shape = classifier_workdir, tuple(image_shape)
        self.data_config, self.neighbours, self.seed = data_config, neighbours, seed
        self._floors = {}  # by the number of samples: real-vs-real scores, computed once each

    @functools.cached_property
    def classifier(self) -> FeatureClassifier:
        """Restored on first use, which is inside a traced eval step: eagerly, not traced."""
        with jax.ensure_compile_time_eval():
            return FeatureClassifier(self.workdir, self.image_shape, self.data_config)

    def outputs(self, batch: dict, fake: jax.Array, samples: int | jax.Array) -> dict:
        """An eval step's per-example features and probabilities of the real images and of the
        generated ones (`fake`, one per row); the first `samples` eval indices count."""
        real_features, real_probs = self.classifier(batch["image"])
        fake_features, fake_probs = self.classifier(fake)
        return {
            "real_features": real_features,
            "real_probs": real_probs,
            "fake_features": fake_features,
            "fake_probs": fake_probs,
            "mask": batch["mask"],
            "fake_mask": batch["mask"] * (batch["index"] < samples),
        }

    def summarize(self, outputs: list[dict], samples: int) -> dict[str, float]:
        """FID, IS, precision, recall and class histogram of the generated set, the floor's, and
        `fid_over_floor`, from every eval batch's `outputs`."""
        joined = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
        real, fake = joined["mask"] > 0, joined["fake_mask"] > 0
        if fake.sum() < samples:
            raise GenJaxError(
                f"{samples} samples to score exceed the {int(real.sum())} examples of the eval "
                "split; lower task.eval_samples"
            )
        real_features, real_probs = joined["real_features"][real], joined["real_probs"][real]
        scores = score(
            real_features,
            real_probs,
            joined["fake_features"][fake],
            joined["fake_probs"][fake],
            self.neighbours,
        )
        if samples not in self._floors:
            self._floors[samples] = self._real_floor(real_features, real_probs, samples)
        floor = self._floors[samples]
        fid_over_floor = scores["fid"] / max(floor["floor_fid"], 1e-12)
        return {**scores, **floor, "fid_over_floor": fid_over_floor}

    def _real_floor(self, test_features, test_probs, samples: int) -> dict[str, float]:
        """The scores of `samples` real training images (a fixed random subset)."""
        train = data.open_split(self.data_config, self.data_config.train_split)
        rows = np.random.default_rng(self.seed).permutation(len(train))
        images = data.preprocessor(self.data_config)(train.read(np.sort(rows[:samples])))
        features, probs = data.map_batches(jax.jit(self.classifier), images["image"])
        scores = score(test_features, test_probs, features, probs, self.neighbours)
        return {f"floor_{k}": scores[k] for k in ("fid", "inception_score", "precision", "recall")}


def scorer(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> SampleScorer | None:
    """The scorer of a generative run's samples of `image_shape`, or None (said once on stderr)
    where `task.classifier_workdir` is empty."""
    task = config.task
    if not task.classifier_workdir:
        if jax.process_index() == 0:
            print(SKIPPED_METRICS, file=sys.stderr)
        return None
    check_classifier_run(task.classifier_workdir)
    return SampleScorer(
        task.classifier_workdir, image_shape, config.data, task.neighbours, task.eval_seed
    )
