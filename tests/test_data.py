"""Input pipelines: shuffling, per-process shards, eval coverage, checkpointable position."""

import jax
import ml_collections
import numpy as np
import pytest

from gen_jax import data
from gen_jax.errors import GenJaxError


def arrays(n=50):
    return {
        "image": np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1),
        "label": np.arange(n, dtype=np.int32),
    }


def labels_of(iterator, steps):
    return [next(iterator)["label"] for _ in range(steps)]


def test_train_batches_are_a_seeded_permutation_each_epoch():
    batches = labels_of(data.train_iterator(arrays(), batch_size=10, seed=3, preprocess=()), 10)
    first_epoch, second_epoch = np.concatenate(batches[:5]), np.concatenate(batches[5:])
    assert sorted(first_epoch) == list(range(50)) == sorted(second_epoch)
    assert not np.array_equal(first_epoch, second_epoch)
    again = labels_of(data.train_iterator(arrays(), batch_size=10, seed=3, preprocess=()), 10)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other_seed = labels_of(data.train_iterator(arrays(), batch_size=10, seed=4, preprocess=()), 5)
    assert not np.array_equal(np.concatenate(other_seed), first_epoch)


def test_processes_split_each_global_batch_into_disjoint_contiguous_shards():
    whole = labels_of(data.train_iterator(arrays(), batch_size=8, seed=0, preprocess=()), 6)
    shards = [
        labels_of(
            data.train_iterator(
                arrays(), batch_size=8, seed=0, preprocess=(), process_index=p, process_count=4
            ),
            6,
        )
        for p in range(4)
    ]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), batch)


def test_iterator_state_restores_the_position():
    iterator = data.train_iterator(arrays(), batch_size=10, seed=0, preprocess=())
    labels_of(iterator, 7)
    state = iterator.get_state()
    expected = labels_of(iterator, 4)
    resumed = data.train_iterator(arrays(), batch_size=10, seed=0, preprocess=())
    resumed.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(expected, labels_of(resumed, 4), strict=True))


def test_eval_batches_count_every_example_exactly_once():
    batches = [
        b
        for p in range(2)
        for b in data.eval_batches(
            arrays(45), batch_size=20, preprocess=(), process_index=p, process_count=2
        )
    ]
    assert {len(b["label"]) for b in batches} == {10}
    counted = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    assert sorted(counted) == list(range(45))


def test_named_preprocessing_scales_pixels():
    batch = {"image": np.array([0, 255], np.uint8)}
    # the end points of the range are exact in float32 (assert_allclose's 1e-7 relative)
    np.testing.assert_allclose(data.preprocessor(("scale_to_unit",))(batch)["image"], [0, 1])
    np.testing.assert_allclose(data.preprocessor(("scale_to_symmetric",))(batch)["image"], [-1, 1])
    with pytest.raises(GenJaxError, match=r"unknown data\.preprocess step"):
        data.preprocessor(("normalise",))


def test_missing_dataset_names_dataset_directory_and_remedy(tmp_path):
    config = ml_collections.ConfigDict(
        {"name": "mnist", "data_dir": str(tmp_path), "max_examples": 0}
    )
    with pytest.raises(GenJaxError) as error:
        data.load_split(config, "train")
    message = str(error.value)
    assert "'mnist'" in message and str(tmp_path) in message and "TFDS_DATA_DIR" in message


def test_mocked_split_decodes_to_uint8_arrays(mock_mnist):
    config = ml_collections.ConfigDict({"name": "mnist", "data_dir": "", "max_examples": 100})
    split = data.load_split(config, "train")
    assert split["image"].shape == (100, 28, 28, 1) and split["image"].dtype == np.uint8
    assert split["label"].shape == (100,) and split["label"].dtype == np.int32


@pytest.mark.parametrize("name", sorted(data.PREPROCESSORS))
def test_preprocessing_gives_the_same_bits_on_the_host_and_compiled(name):
    """data.on_device preprocesses inside the compiled step: it must match numpy exactly."""
    batch = {"image": np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)}
    host = data.PREPROCESSORS[name](batch)["image"]
    compiled = np.asarray(jax.jit(data.PREPROCESSORS[name])(batch)["image"])
    np.testing.assert_array_equal(compiled, host)
