"""Input pipelines: shuffling, per-process shards, eval coverage, checkpointable position."""

import jax
import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import data
from gen_jax.errors import GenJaxError


def in_memory(n=50, shape=(1, 1, 1)):
    images = (np.arange(n * np.prod(shape)) % 256).astype(np.uint8).reshape(n, *shape)
    spec = data.DataSpec(shape, tuple("0123456789"), True)
    return data.InMemory({"image": images, "label": np.arange(n, dtype=np.int32)}, spec)


def data_config(**settings):
    config = config_lib.base_config().data
    config.update({"batch_size": 10, "preprocess": (), **settings})
    return config


def iterator(split=None, seed=0, **settings):
    return data.train_iterator(split or in_memory(), data_config(**settings), seed=seed)


def labels_of(iterator, steps):
    return [next(iterator)["label"] for _ in range(steps)]


def test_train_batches_are_a_seeded_permutation_each_epoch():
    batches = labels_of(iterator(seed=3), 10)
    first_epoch, second_epoch = np.concatenate(batches[:5]), np.concatenate(batches[5:])
    assert sorted(first_epoch) == list(range(50)) == sorted(second_epoch)
    assert not np.array_equal(first_epoch, second_epoch)
    again = labels_of(iterator(seed=3), 10)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other_seed = labels_of(iterator(seed=4), 5)
    assert not np.array_equal(np.concatenate(other_seed), first_epoch)


@pytest.mark.parametrize("indices_only", [False, True])
def test_a_batch_like_the_iterators_has_their_keys_shapes_and_dtypes(indices_only):
    config = data_config(preprocess=("scale_to_unit",))
    options = {"seed": 0, "process_index": 1, "process_count": 2, "indices_only": indices_only}
    like = data.train_batch_like(in_memory(), config, **options)
    first = next(data.train_iterator(in_memory(), config, **options))
    assert {k: (v.shape, v.dtype) for k, v in like.items()} == {
        k: (v.shape, v.dtype) for k, v in first.items()
    }
    assert like["index" if indices_only else "image"].shape[0] == 5  # this process's rows


def test_processes_split_each_global_batch_into_disjoint_contiguous_shards():
    config = data_config(batch_size=8)
    whole = labels_of(data.train_iterator(in_memory(), config, seed=0), 6)
    shards = [
        labels_of(
            data.train_iterator(in_memory(), config, seed=0, process_index=p, process_count=4), 6
        )
        for p in range(4)
    ]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), batch)


def test_iterator_state_restores_the_position():
    first = iterator()
    labels_of(first, 7)
    state = first.get_state()
    expected = labels_of(first, 4)
    resumed = iterator()
    resumed.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(expected, labels_of(resumed, 4), strict=True))


def test_eval_batches_count_every_example_exactly_once():
    config = data_config(eval_batch_size=20)
    batches = [
        b
        for p in range(2)
        for b in data.eval_batches(in_memory(45), config, process_index=p, process_count=2)
    ]
    assert {len(b["label"]) for b in batches} == {10}
    counted = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    assert sorted(counted) == list(range(45))


def test_the_example_batch_spreads_over_the_split_and_processes_share_it():
    config = data_config()
    whole = data.spread_batch(in_memory(45), config, batch_size=10)["label"]
    np.testing.assert_array_equal(whole, [0, 5, 10, 15, 20, 24, 29, 34, 39, 44])
    shares = [
        data.spread_batch(in_memory(45), config, batch_size=10, process_index=p, process_count=2)
        for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([s["label"] for s in shares]), whole)


def test_named_preprocessing_scales_pixels():
    batch = {"image": np.array([[0, 255]], np.uint8).reshape(1, 1, 2, 1)}
    unit = data.preprocessor(data_config(preprocess=("scale_to_unit",)))(batch)["image"]
    symmetric = data.preprocessor(data_config(preprocess=("scale_to_symmetric",)))(batch)["image"]
    # the end points of the range are exact in float32 (assert_allclose's 1e-7 relative)
    np.testing.assert_allclose(unit.ravel(), [0, 1])
    np.testing.assert_allclose(symmetric.ravel(), [-1, 1])
    with pytest.raises(GenJaxError, match=r"unknown data\.preprocess step"):
        data.preprocessor(data_config(preprocess=("normalise",)))
    with pytest.raises(GenJaxError, match=r"unknown data\.crop_mode 'mirror'; use one of"):
        data.preprocessor(data_config(preprocess=("random_crop",), crop_mode="mirror"))


def test_normalize_gives_zero_mean_unit_std_per_channel_and_needs_its_statistics():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 3)).astype(np.uint8)
    mean, std = images.mean((0, 1, 2)) / 255, images.std((0, 1, 2)) / 255
    config = data_config(preprocess=("normalize",), mean=tuple(mean), std=tuple(std))
    out = data.preprocessor(config)({"image": images})["image"]
    # float32 arithmetic on 4096 values per channel: the mean is exact to ~1e-6
    np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std((0, 1, 2)), 1, rtol=1e-5)
    low, high = data.pixel_range(config)
    np.testing.assert_allclose(low, -mean / std)
    np.testing.assert_allclose(high, (1 - mean) / std)
    with pytest.raises(GenJaxError, match=r"data\.mean and data\.std"):
        data.preprocessor(data_config(preprocess=("normalize",)))({"image": images})


AUGMENT = ("random_crop", "horizontal_flip", "scale_to_unit")


@pytest.mark.parametrize("mode, numpy_mode", [("zeros", "constant"), ("reflect", "reflect")])
def test_random_crop_and_flip_move_each_image_within_its_padding(mode, numpy_mode):
    """Every output is its input shifted by at most the padding (zeros, or the image mirrored at
    its borders) and maybe mirrored; across 200 examples every offset and both flips occur."""
    split = in_memory(200, (6, 6, 1))
    config = data_config(preprocess=AUGMENT, crop_padding=2, crop_mode=mode, batch_size=200)
    batch = next(data.train_iterator(split, config, seed=1))
    pad = 2
    seen = set()
    for out, label in zip(batch["image"], batch["label"], strict=True):
        image = split.arrays["image"][label]  # labels number the examples
        padded = np.pad(image[..., 0], pad, mode=numpy_mode)
        padded = padded.astype(np.float32) * np.float32(1 / 255)
        matches = {
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if np.array_equal(
                (padded[dy : dy + 6, dx : dx + 6])[:, ::-1]
                if flip
                else padded[dy : dy + 6, dx : dx + 6],
                out[..., 0],
            )
        }
        assert matches, "an output is no shifted or mirrored copy of its input"
        seen |= matches
    assert {m[:2] for m in seen} == {(dy, dx) for dy in range(5) for dx in range(5)}
    assert {m[2] for m in seen} == {False, True}


def test_alternating_flips_mirror_each_image_in_every_other_epoch_on_host_and_device():
    """Batches of 4 from 10 examples straddle epochs; over 4 epochs each example is mirrored in
    alternate ones, starting either way, the same in the host pipeline and the compiled lookup."""
    split = in_memory(10, (2, 3, 1))
    config = data_config(preprocess=("alternating_flip", "scale_to_unit"), batch_size=4)
    host = data.train_iterator(split, config, seed=3)
    indices = data.train_iterator(split, config, seed=3, indices_only=True)
    lookup = jax.jit(lambda s, b: data.lookup(s, b, config, seed=3))
    scaled = data.preprocessor(data_config(preprocess=("scale_to_unit",)))(split.arrays)["image"]
    flips = {example: [] for example in range(10)}
    for _ in range(10):  # 40 examples: 4 epochs
        batch, device = next(host), lookup(split.arrays, next(indices))
        np.testing.assert_array_equal(np.asarray(device["image"]), batch["image"])
        for image, example in zip(batch["image"], batch["label"], strict=True):
            original = scaled[example]
            mirrored = np.array_equal(image, original[:, ::-1])
            assert mirrored or np.array_equal(image, original)
            flips[int(example)].append(mirrored)
    for example, seen in flips.items():
        assert len(seen) == 4 and seen in ([True, False] * 2, [False, True] * 2), (example, seen)
    assert {seen[0] for seen in flips.values()} == {False, True}


@pytest.mark.parametrize("crop_mode", ["zeros", "reflect"])
def test_random_steps_are_keyed_by_seed_step_and_example_the_same_on_host_and_device(crop_mode):
    """The host pipeline and the compiled lookup (data.on_device) give the same bits; a batch's
    draws depend on (seed, step, example), not on the batch it sits in; evaluation skips them."""
    split = in_memory(40, (8, 8, 3))
    normalize = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_mode": crop_mode}
    config = data_config(preprocess=(*AUGMENT[:2], "normalize"), **normalize)
    host = [next(it) for it in [data.train_iterator(split, config, seed=5)] for _ in range(6)]
    indices = data.train_iterator(split, config, seed=5, indices_only=True)
    lookup = jax.jit(lambda s, b: data.lookup(s, b, config, seed=5))
    for expected in host:
        device = lookup(split.arrays, next(indices))
        np.testing.assert_array_equal(np.asarray(device["image"]), expected["image"])
    # the same example at the same step, in a batch of another size: the same draw
    one = data.preprocessor(config, seed=5, train=True)
    step3 = host[3]
    example = int(step3["label"][0])
    alone = one(
        {
            **split.read(np.array([example])),
            "step": np.array([3], np.int32),
            "index": np.array([example], np.int32),
        }
    )
    np.testing.assert_array_equal(alone["image"][0], step3["image"][0])
    other_step = one(
        {
            **split.read(np.array([example])),
            "step": np.array([4], np.int32),
            "index": np.array([example], np.int32),
        }
    )
    other_seed = data.preprocessor(config, seed=6, train=True)(
        {
            **split.read(np.array([example])),
            "step": np.array([3], np.int32),
            "index": np.array([example], np.int32),
        }
    )
    assert not np.array_equal(other_step["image"], alone["image"])
    assert not np.array_equal(other_seed["image"], alone["image"])
    evaluated = next(data.eval_batches(split, config))["image"][: len(split)]
    plain = data.preprocessor(
        data_config(preprocess=("normalize",), mean=(0.5,) * 3, std=(0.25,) * 3)
    )(split.read(np.arange(len(evaluated))))
    np.testing.assert_array_equal(evaluated, plain["image"])


def test_missing_dataset_names_dataset_directory_and_remedy(tmp_path):
    config = data_config(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(GenJaxError) as error:
        data.load_split(config, "train")
    message = str(error.value)
    assert "'mnist'" in message and str(tmp_path) in message and "TFDS_DATA_DIR" in message
    # and the canonical files it then tried (tests reach no server: tests/conftest.py)
    assert "train-images-idx3-ubyte.gz" in message and "by hand" in message


def test_mocked_split_decodes_to_uint8_arrays(mock_mnist):
    config = data_config(max_examples=100)
    split = data.load_split(config, "train")
    assert split["image"].shape == (100, 28, 28, 1) and split["image"].dtype == np.uint8
    assert split["label"].shape == (100,) and split["label"].dtype == np.int32


@pytest.mark.parametrize("name", ["scale_to_unit", "scale_to_symmetric", "normalize"])
def test_scalings_give_the_same_bits_on_the_host_and_compiled(name):
    """data.on_device preprocesses inside the compiled step: it must match numpy exactly."""
    batch = {"image": np.arange(256 * 3, dtype=np.uint16).astype(np.uint8).reshape(1, 16, 16, 3)}
    config = data_config(preprocess=(name,), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    host = data.preprocessor(config)(batch)["image"]
    compiled = np.asarray(jax.jit(data.preprocessor(config))(batch)["image"])
    np.testing.assert_array_equal(compiled, host)
