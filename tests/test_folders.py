"""Image folders: listing and labels, the decoded cache (reuse, rebuild, never inside the data),
resizing and channels, and a clear error for every kind of bad folder."""

import itertools
import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gen_jax import config as config_lib
from gen_jax import data, tasks
from gen_jax.data import folder as folder_lib
from gen_jax.errors import GenJaxError
from tests.helpers.runs import make_image_folder


def folder_config(root, cache, **settings):
    config = config_lib.base_config().data
    config.update({"folder": str(root), "cache_dir": str(cache), **settings})
    return config


@pytest.fixture
def open_split(tmp_path, capfd):
    """open_split(root, split, **settings) -> (Split, stderr), forgetting opened splits first."""

    def opened(root, split="train", **settings):
        data.clear_cache()
        split = data.open_split(folder_config(root, tmp_path / "cache", **settings), split)
        return split, capfd.readouterr().err

    yield opened
    data.clear_cache()


def test_a_labelled_folder_decodes_exactly_with_labels_from_sorted_class_names(
    tmp_path, open_split
):
    written = make_image_folder(tmp_path / "images", {"train": 7, "test": 3})
    split, _ = open_split(tmp_path / "images")
    assert split.spec == data.DataSpec((12, 12, 3), ("cat", "dog", "owl"), True)
    arrays = split.read(np.arange(len(split)))
    np.testing.assert_array_equal(arrays["image"], written["train"])  # PNG: lossless
    np.testing.assert_array_equal(arrays["label"], [0, 0, 0, 1, 1, 2, 2])
    assert len(open_split(tmp_path / "images", "test")[0]) == 3


def test_an_unlabelled_folder_has_images_and_no_labels(tmp_path, open_split):
    written = make_image_folder(tmp_path / "images", {"train": 5}, shape=(8, 8, 1), classes=())
    split, _ = open_split(tmp_path / "images")
    assert split.spec == data.DataSpec((8, 8, 1), (), False)
    arrays = split.read(np.arange(5))
    assert set(arrays) == {"image"}
    np.testing.assert_array_equal(arrays["image"], written["train"])


def test_the_cache_is_reused_rebuilt_when_the_folder_changes_and_never_written_inside_it(
    tmp_path, open_split
):
    root = tmp_path / "images"
    make_image_folder(root, {"train": 6})
    # read-only, as ../shared may be; CI runs as root, which writes anyway: the listing below
    # is what shows that nothing was written or changed
    listing = lambda: {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
    before = listing()
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        _, built = open_split(root)
        assert "decoding 6 images" in built
        _, again = open_split(root)
        assert again == ""  # reused: nothing decoded
        assert listing() == before  # no file added, none changed
        root.chmod(0o755)
        (root / "train" / "cat").chmod(0o755)
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "train" / "cat" / "new.png")
        changed, rebuilt = open_split(root)
        assert len(changed) == 7 and "decoding 7 images" in rebuilt
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("damage", ["records", "metadata", "version"])
def test_a_damaged_or_outdated_cache_is_rebuilt_not_reused(tmp_path, open_split, damage):
    written = make_image_folder(tmp_path / "images", {"train": 4})
    open_split(tmp_path / "images")
    (cache,) = (tmp_path / "cache" / "folders").iterdir()
    if damage == "records":
        records = cache / "images.array_record"
        damaged = bytearray(records.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte in the pixels
        records.write_bytes(bytes(damaged))
    elif damage == "metadata":
        (cache / "meta.json").write_text("{not json")
    else:
        meta = json.loads((cache / "meta.json").read_text())
        (cache / "meta.json").write_text(json.dumps({**meta, "version": 0}))
    split, message = open_split(tmp_path / "images")
    assert "damaged or outdated; rebuilding" in message
    np.testing.assert_array_equal(split.read(np.arange(4))["image"], written["train"])


def test_a_cache_another_process_finished_meanwhile_is_kept_not_replaced(
    tmp_path, open_split, monkeypatch
):
    """Hosts of one run that share a cache directory decode the same folder at once: the first
    to finish keeps its cache, which it may already read, and the others discard theirs."""
    written = make_image_folder(tmp_path / "images", {"train": 4})
    build, finished = folder_lib.build, []

    def racing(listing, data_config, folder, key):
        if not finished:  # the other process finishes first, while this one decodes
            finished.append(build(listing, data_config, folder, key))
            finished.append((folder / "meta.json").stat().st_ino)
        return build(listing, data_config, folder, key)

    monkeypatch.setattr(folder_lib, "build", racing)
    split, _ = open_split(tmp_path / "images")
    (cache,) = (tmp_path / "cache" / "folders").iterdir()
    assert (cache / "meta.json").stat().st_ino == finished[1]  # the first one's, untouched
    assert not [p for p in cache.parent.iterdir() if p != cache]  # no temporary left behind
    np.testing.assert_array_equal(split.read(np.arange(4))["image"], written["train"])


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path, open_split):
    folder = tmp_path / "images" / "train" / "a"
    folder.mkdir(parents=True)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # the centre half is white: after the crop, all of it
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(folder / "small.png")
    split, _ = open_split(tmp_path / "images", image_size=8)
    images = split.read(np.arange(2))["image"]
    assert images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(images[0], 7)  # small.png sorts first; upsampled flat
    assert images[1][:, 1:-1].min() == 255  # bilinear edges may blend the black border


@pytest.mark.slow
def test_streamed_folder_batches_with_two_workers_equal_in_memory_ones_across_epochs(tmp_path):
    make_image_folder(tmp_path / "images", {"train": 40})
    settings = {"batch_size": 16, "preprocess": ("random_crop", "horizontal_flip")}
    config = folder_config(tmp_path / "images", tmp_path / "cache", workers=2, **settings)
    data.clear_cache()
    streamed = data.open_split(config, "train")  # read from disk by grain's worker processes
    in_memory = data.get_split(config, "train")
    assert not isinstance(streamed, data.InMemory) and isinstance(in_memory, data.InMemory)
    batches = lambda split: list(itertools.islice(data.train_iterator(split, config, seed=3), 6))
    # 6 batches of 16 from 40 images: through the second epoch into the third
    for a, b in zip(batches(streamed), batches(in_memory), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    data.clear_cache()


def test_a_changed_image_rebuilds_the_cache(tmp_path, open_split):
    root = tmp_path / "images"
    written = make_image_folder(root, {"train": 4})
    first, _ = open_split(root)
    np.testing.assert_array_equal(first.read(np.arange(4))["image"], written["train"])
    changed = root / "train" / "cat" / "000.png"  # the first image: rewritten, same size
    Image.fromarray(255 - written["train"][0]).save(changed)
    os.utime(changed, ns=(1, 1))  # even an old modification time: the size or time differs
    again, err = open_split(root)
    assert "decoding 4 images" in err
    np.testing.assert_array_equal(again.read(np.arange(1))["image"][0], 255 - written["train"][0])


def test_jpeg_images_decode_as_pillow_decodes_them(tmp_path, open_split):
    folder = tmp_path / "images" / "train" / "a"
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 255, 16)
    smooth = [  # gradients: what JPEG keeps well
        np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]), -1)
        .round()
        .astype(np.uint8)
        for _ in range(2)
    ]
    smooth[1] = smooth[1][::-1]
    for i, image in enumerate(smooth):
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=95)
    split, _ = open_split(tmp_path / "images")
    decoded = split.read(np.arange(2))["image"]
    for i in range(2):
        np.testing.assert_array_equal(
            decoded[i], np.asarray(Image.open(folder / f"{i}.jpg").convert("RGB"))
        )
    # lossy: near the originals (a few levels), not equal to them
    assert 0 < np.abs(decoded.astype(int) - np.stack(smooth)).mean() < 4


def test_a_split_above_the_memory_budget_is_streamed_and_channel_stats_are_the_pixels(tmp_path):
    make_image_folder(tmp_path / "images", {"train": 8}, shape=(4, 4, 3))
    config = folder_config(tmp_path / "images", tmp_path / "cache")
    data.clear_cache()
    split = data.open_split(config, "train")  # 8 images of 48 bytes
    assert isinstance(data.get_split(config.copy_and_resolve_references(), "train"), data.InMemory)
    config.memory_budget = 8 * 48 - 1
    assert data.get_split(config, "train") is split  # read from disk by index
    pixels = split.read(np.arange(8))["image"] / 255.0
    stats = data.channel_stats(config)
    np.testing.assert_allclose(stats["mean"], pixels.mean((0, 1, 2)), atol=5e-5)  # 4 decimals
    np.testing.assert_allclose(stats["std"], pixels.std((0, 1, 2)), atol=5e-5)
    data.clear_cache()


def test_mixed_gray_and_color_convert_with_channels_and_are_an_error_without(tmp_path, open_split):
    folder = tmp_path / "images" / "train"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(folder / "gray.png")
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(folder / "color.png")
    with pytest.raises(GenJaxError, match=r"mix channel counts: .*color\.png.*gray\.png.*channels"):
        open_split(tmp_path / "images")
    split, _ = open_split(tmp_path / "images", channels=3)
    images = split.read(np.arange(2))["image"]
    assert images.shape == (2, 4, 4, 3) and images[1].min() == 200  # gray.png, as RGB
    gray, _ = open_split(tmp_path / "images", channels=1)
    assert gray.spec.image_shape == (4, 4, 1)


def test_unreadable_images_are_named_and_counted_or_skipped_and_logged(tmp_path, open_split):
    make_image_folder(tmp_path / "images", {"train": 4})
    (tmp_path / "images" / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    truncated = tmp_path / "images" / "train" / "dog" / "cut.png"
    truncated.write_bytes((tmp_path / "images" / "train" / "dog" / "001.png").read_bytes()[:60])
    with pytest.raises(
        GenJaxError, match=r"2 image file\(s\) cannot be read, e\.g\. .*broken\.png"
    ):
        open_split(tmp_path / "images")
    split, message = open_split(tmp_path / "images", skip_unreadable=True)
    assert len(split) == 4 and split.spec.skipped == 2
    assert "skipped 2 unreadable image(s)" in message


def test_images_of_different_sizes_name_two_files_and_their_sizes(tmp_path, open_split):
    folder = tmp_path / "images" / "train"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "b.png")
    with pytest.raises(GenJaxError, match=r"a\.png is 6x4, .*b\.png is 5x5.*data\.image_size"):
        open_split(tmp_path / "images")


def test_bad_folders_are_clear_errors(tmp_path, open_split):
    with pytest.raises(GenJaxError, match=r"data\.folder .*missing does not exist"):
        open_split(tmp_path / "missing")
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "train" / "notes.txt").write_text("no images here")
    with pytest.raises(
        GenJaxError, match=r"no 'test' split folder \(split folders there: \['train'"
    ):
        open_split(root, "test")
    with pytest.raises(GenJaxError, match=r"train has no images .* and no class folders"):
        open_split(root)
    make_image_folder(root, {"train": 2}, classes=("a", "b"))
    (root / "train" / "empty").mkdir()
    with pytest.raises(GenJaxError, match=r"class folder .*empty has no images"):
        open_split(root)
    os.rmdir(root / "train" / "empty")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "train" / "loose.png")
    with pytest.raises(GenJaxError, match=r"class folders and also images outside them.*loose"):
        open_split(root)


@pytest.mark.parametrize(
    ("test_classes", "named"),
    [
        (("a", "c"), r"missing \['b'\], extra none"),
        (("A", "b", "c"), r"missing \['a'\], extra \['A'\]"),
    ],
)
def test_every_split_has_the_training_splits_class_folders_or_it_is_an_error(
    tmp_path, open_split, test_classes, named
):
    root = tmp_path / "images"
    make_image_folder(root, {"train": 6}, classes=("a", "b", "c"))
    make_image_folder(root, {"test": 6}, classes=test_classes)  # labels would shift silently
    with pytest.raises(GenJaxError, match=f"class folders of .*test differ .*: {named}"):
        open_split(root, "test")


def test_hidden_entries_are_never_splits_classes_or_images(tmp_path, open_split):
    root = tmp_path / "images"
    written = make_image_folder(root, {"train": 6, "test": 3}, classes=("a", "b"))
    for folder in (root, root / "train", root / "train" / "a", root / "test"):
        (folder / ".ipynb_checkpoints").mkdir()
        Image.fromarray(written["train"][0]).save(folder / ".ipynb_checkpoints" / "x.png")
    (root / "train" / "b" / ".hidden.png").write_bytes(b"not an image")
    split, err = open_split(root)
    assert split.spec.class_names == ("a", "b")
    np.testing.assert_array_equal(split.read(np.arange(len(split)))["image"], written["train"])
    assert f"skipped hidden entries in {root / 'train'}: .ipynb_checkpoints" in err
    assert len(open_split(root, "test")[0]) == 3


def test_max_examples_of_a_folder_is_a_class_stratified_subset_the_same_every_time(
    tmp_path, open_split
):
    root = tmp_path / "images"
    written = make_image_folder(root, {"train": 30}, classes=("a", "b", "c"))  # stored a, b, c
    split, _ = open_split(root, max_examples=9)
    labels = split.read(np.arange(9))["label"]
    assert np.bincount(labels).tolist() == [3, 3, 3]  # not the first 9: all of class a
    again, _ = open_split(root, max_examples=9)
    chosen = again.read(np.arange(9))["image"]
    np.testing.assert_array_equal(chosen, split.read(np.arange(9))["image"])
    assert "9-of-30-stratified" in split.identity
    assert all((written["train"] == image).all(axis=(1, 2, 3)).any() for image in chosen)


def test_a_stratified_subset_gives_each_class_its_share_by_largest_remainders():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    subset = data.sources.stratified_subset(labels, 7)
    assert np.bincount(labels[subset]).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert (np.diff(subset) > 0).all()


def test_a_tfds_dataset_without_an_image_feature_lists_the_features_it_has(monkeypatch):
    from gen_jax.data import sources

    features = {"audio": None, "speaker_id": None}
    monkeypatch.setattr(
        sources, "_tfds_source", lambda name, split, directory: ([], features, "1.0.0")
    )
    config = config_lib.base_config().data
    config.name = "speech"
    with pytest.raises(GenJaxError, match=r"'speech' has no 'image' feature .*audio, speaker_id"):
        sources._tfds_split(config, "train")


def test_a_tfds_dataset_of_varying_image_sizes_needs_and_takes_image_size(monkeypatch):
    from gen_jax.data import sources

    rng = np.random.default_rng(0)
    records = [
        {"image": rng.integers(0, 256, shape, dtype=np.uint8), "label": i}
        for i, shape in enumerate([(30, 20, 1), (16, 40, 1)])
    ]

    class Records(list):
        def __getitems__(self, keys):
            return [self[k] for k in keys]

    features = {
        "image": SimpleNamespace(shape=(None, None, 1)),
        "label": SimpleNamespace(names=["a", "b"]),
    }
    monkeypatch.setattr(sources, "_tfds_source", lambda *_: (Records(records), features, "1.0.0"))
    config = config_lib.base_config().data
    with pytest.raises(GenJaxError, match=r"images of varying size \(None, None, 1\); set data"):
        sources._tfds_split(config, "train")
    config.update({"image_size": 12, "channels": 3})
    split = sources._tfds_split(config, "train")
    assert split.spec == data.DataSpec((12, 12, 3), ("a", "b"), True)
    batch = split.read(np.arange(2))
    assert batch["image"].shape == (2, 12, 12, 3) and list(batch["label"]) == [0, 1]
    expected = folder_lib.conform(folder_lib.from_array(records[0]["image"]), "RGB", 12)
    np.testing.assert_array_equal(batch["image"][0], expected)


@pytest.mark.parametrize(
    ("task", "model"), [("classifier", {}), ("gan", {"name": "dcgan", "num_classes": 10})]
)
def test_a_labelled_task_on_unlabelled_data_is_refused(task, model):
    config = config_lib.gan_config() if task == "gan" else config_lib.base_config()
    config.model.update(model)
    spec = data.DataSpec((28, 28, 1), (), False)
    with pytest.raises(GenJaxError, match=r"needs labelled data, but the training split has no"):
        tasks.fit_to_data(config, spec)


def test_models_take_the_data_shape_unless_the_experiment_contradicts_it():
    spec = data.DataSpec((32, 32, 3), tuple("abcde"), True)
    classifier, gan = config_lib.base_config(), config_lib.gan_config()
    tasks.fit_to_data(classifier, spec)
    tasks.fit_to_data(gan, spec)
    assert classifier.model.num_classes == 5
    assert (gan.model.image_size, gan.model.channels, gan.model.num_classes) == (32, 3, 0)
    gan.model.channels = 1
    with pytest.raises(GenJaxError, match=r"config\.model\.channels is 1 but the data give 3"):
        tasks.fit_to_data(gan, spec)
    with pytest.raises(GenJaxError, match=r"square images; the data are 32x24"):
        tasks.fit_to_data(config_lib.gan_config(), data.DataSpec((32, 24, 3), (), False))


def test_the_default_cache_lives_in_the_user_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert folder_lib.cache_root(config_lib.base_config().data) == tmp_path / "gen_jax"
