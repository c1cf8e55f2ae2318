"""Sample quality: the metrics, and how every generative family's samples are scored.

The metrics are plain numpy functions of feature arrays: Fréchet distance (FID), the kernel
Inception distance (KID: unbiased MMD^2, cubic polynomial kernel, Bińkowski et al., 2018), an
Inception-Score-style score and class histogram from class probabilities, and improved precision
and recall (Kynkäänniemi et al., 2019: k-NN balls around each set's points). `SampleScorer`
computes them in the feature spaces of `gen_jax.feature_spaces`: a trained classifier run, and
the FID Inception-v3 of the papers, each against its real floor.
"""

from __future__ import annotations

import sys
import warnings

import jax
import ml_collections
import numpy as np

from gen_jax import data
from gen_jax.errors import GenJaxError

DISTANCE_CHUNK = 1000  # rows of a pairwise-distance matrix computed at once
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults


# ----------------------------------------------------------------------------- the math
def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def check_set_sizes(*sets: np.ndarray) -> None:
    """At least 2 points per set; a warning where a set has fewer points than dimensions, whose
    covariance is then rank-deficient and the FID biased (upwards, more so the fewer points)."""
    for points in sets:
        count, dimension = np.shape(points)
        if count < 2:
            raise GenJaxError(f"a Fréchet distance needs at least 2 images per set, got {count}")
        if count < dimension:
            warnings.warn(
                f"FID from {count} images of {dimension}-d features: the covariance has rank "
                f"< {dimension}, so the distance is biased upwards and not comparable with "
                "published numbers (10k or 50k images); use more images",
                stacklevel=3,
            )


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2) between Gaussians fitted to (N, D) sets."""
    check_set_sizes(a, b)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (C_a C_b)^1/2 = sum of the square roots of the eigenvalues of the PSD S C_b S, S = C_a^1/2
    root = _sqrt_psd(cov_a)
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0.0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID as torch-fidelity computes it: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over
    `subsets` random subsets of `subset_size` points of each set (fewer if a set is smaller);
    the mean and standard deviation over subsets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise GenJaxError(f"KID needs at least 2 images per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    kernel = lambda x, y: (x @ y.T / a.shape[1] + 1.0) ** 3
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        values.append(within - 2.0 * k_xy.sum() / size**2)
    return float(np.mean(values)), float(np.std(values))


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


# ----------------------------------------------------------------------------- a task's scores
SKIPPED_METRICS = (
    "gen-jax: task.classifier_workdir is empty and task.inception_samples is 0, so FID / IS / "
    "precision / recall are skipped. Train a classifier (gen-jax train experiments/mnist_cnn.py "
    "--workdir runs/mnist_cnn) and pass --config.task.classifier_workdir=runs/mnist_cnn, or "
    "--config.task.inception_samples=10000 for the papers' Inception-v3 scores."
)


def check_sample_count(neighbours: int, samples: int, what: str) -> None:
    """Refuse a number of samples to score that leaves the k-NN manifolds no neighbours."""
    if not 0 < neighbours < samples:
        raise GenJaxError(
            f"task.neighbours {neighbours} must be at least 1 and below {what} {samples}: the "
            "k-NN manifolds of precision and recall need k + 1 points"
        )


def inception_scores(
    fake: np.ndarray, train: np.ndarray, test: np.ndarray, neighbours: int, seed: int = 0
) -> dict[str, float]:
    """Scores of generated features against the train split's (the papers' reference), FID
    against as many test images, and the floor: as many train images against those test ones."""
    count = len(fake)
    subset = train[reference_rows(len(train), count, seed)]
    kid, kid_std = kernel_inception_distance(fake, train, seed=seed)
    floor_kid, _ = kernel_inception_distance(subset, test, seed=seed)
    precision, recall = precision_recall(subset, fake, neighbours)
    return {
        "inception_fid": frechet_distance(train, fake),
        "inception_fid_test": frechet_distance(test, fake),
        "inception_kid": kid,
        "inception_kid_std": kid_std,
        "inception_precision": precision,
        "inception_recall": recall,
        "inception_floor_fid": frechet_distance(subset, test),
        "inception_floor_kid": floor_kid,
        "inception_samples": float(count),
        "inception_reference": float(len(train)),
    }


def reference_rows(size: int, count: int, seed: int = 0) -> np.ndarray:
    """The rows of a set of `size` that a subset of `count` takes: all, in order, or a seeded
    random subset in order (a folder's split is stored class by class)."""
    if not count or count >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:count])


class SampleScorer:
    """How every generative family that samples is scored.

    - In a classifier run's features (`classifier`, called inside the compiled eval step): the
      generated images against the real eval split, beside as many real training images (the
      floor), and the FID as a multiple of the floor's, so that a goal in those terms holds
      whichever classifier scores.
    - In the FID Inception-v3's (`inception`, final evaluation only, `inception_samples` images):
      the eval step returns the samples as uint8 pictures; `summarize` computes their features
      outside it and scores them against the train split's cached features (`inception_scores`).
    """

    def __init__(
        self,
        classifier,
        inception,
        data_config: ml_collections.ConfigDict,
        task_config: ml_collections.ConfigDict,
    ):
        self.classifier, self.inception, self.data_config = classifier, inception, data_config
        self.neighbours, self.seed = task_config.neighbours, task_config.eval_seed
        self.inception_samples = task_config.get("inception_samples", 0)
        self.inception_reference = task_config.get("inception_reference", 0)
        self._floors = {}  # by the number of samples: real-vs-real scores, computed once each

    def outputs(self, batch: dict, fake: jax.Array, samples, final: bool = False) -> dict:
        """An eval step's per-example outputs: features and probabilities of the real images and
        of the generated ones (`fake`, one per row; the first `samples` eval indices count) in
        the classifier's space, and in a final evaluation the generated pictures to score in
        Inception's."""
        outputs = {}
        if self.classifier is not None:
            real_features, real_probs = self.classifier(batch["image"])
            fake_features, fake_probs = self.classifier(fake)
            outputs = {
                "real_features": real_features,
                "real_probs": real_probs,
                "fake_features": fake_features,
                "fake_probs": fake_probs,
                "mask": batch["mask"],
                "fake_mask": batch["mask"] * (batch["index"] < samples),
            }
        if self.inception is not None and final:
            from gen_jax.feature_spaces import to_levels

            outputs["inception_pictures"] = to_levels(fake, *data.pixel_range(self.data_config))
            outputs["inception_mask"] = batch["mask"] * (batch["index"] < self.inception_samples)
        return outputs

    def summarize(self, outputs: list[dict], samples: int) -> dict[str, float]:
        """Every score the outputs allow: the classifier space's (FID, IS, precision, recall,
        class histogram, the floor's, `fid_over_floor`) and, in a final evaluation, Inception's."""
        joined = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
        results = self._classifier_scores(joined, samples) if self.classifier else {}
        if "inception_pictures" in joined:
            results |= self._inception_scores(joined)
        return results

    def _classifier_scores(self, joined: dict, samples: int) -> dict[str, float]:
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

    def _inception_scores(self, joined: dict) -> dict[str, float]:
        from gen_jax.feature_spaces import reference_features

        pictures = joined["inception_pictures"][joined["inception_mask"] > 0]
        if len(pictures) < self.inception_samples:
            raise GenJaxError(
                f"task.inception_samples {self.inception_samples} exceeds the {len(pictures)} "
                "examples of the eval split; lower it, or score more with `gen-jax fid`"
            )
        fake = self.inception.features(pictures, progress="Inception features of the samples")
        split = self.data_config.train_split, self.data_config.eval_split
        train = reference_features(
            self.inception, self.data_config, split[0], self.inception_reference
        )
        test = reference_features(self.inception, self.data_config, split[1], len(fake))
        return inception_scores(fake, train, test, self.neighbours, self.seed)


def scorer(config: ml_collections.ConfigDict) -> SampleScorer | None:
    """The scorer of a generative run's samples in the spaces its task section asks for (a
    classifier run, Inception-v3), or None (said once on stderr) where it asks for none."""
    from gen_jax import feature_spaces

    task = config.task
    inception_samples, classifier_workdir = (
        task.get("inception_samples", 0),
        task.get("classifier_workdir", ""),
    )
    if not classifier_workdir and not inception_samples:
        if jax.process_index() == 0:
            print(SKIPPED_METRICS, file=sys.stderr)
        return None
    check_sample_count(
        task.neighbours, inception_samples or task.neighbours + 1, "task.inception_samples"
    )
    classifier = None
    if classifier_workdir:
        classifier = feature_spaces.ClassifierRun(classifier_workdir, config.data)
    inception = feature_spaces.Inception() if inception_samples else None
    return SampleScorer(classifier, inception, config.data, task)
