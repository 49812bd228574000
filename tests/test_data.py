"""Data pipelines: embedded digits (deterministic, resumable, per-process), augmentations, TFDS
through tfds.testing.mock_data (no download), and the error for unprepared datasets."""
import time

import numpy as np
import pytest
import test_train_helpers  # noqa: F401 - puts the repo root on sys.path

from score_jax import data


def test_digits_pipeline_is_a_function_of_seed_and_step():
    a = data.get_dataset("DIGITS", split="train", batch_size=32, image_size=8, training=True,
                         seed=3, process_index=0, process_count=1)
    b = data.get_dataset("DIGITS", split="train", batch_size=32, image_size=8, training=True,
                         seed=3, process_index=0, process_count=1)
    x7 = a.batch(7)
    assert x7["image"].shape == (32, 8, 8, 1) and x7["image"].dtype == np.float32
    assert x7["image"].min() >= 0.0 and x7["image"].max() <= 1.0
    np.testing.assert_array_equal(x7["image"], b.batch(7)["image"])  # same (seed, step)
    np.testing.assert_array_equal(x7["image"], next(b.iterate(7))["image"])  # resume at 7
    assert not np.array_equal(x7["image"], a.batch(8)["image"])
    # one epoch visits every example once (1617 // 32 = 50 batches)
    labels = np.concatenate([a.batch(s)["label"] for s in range(a.steps_per_epoch)])
    assert a.steps_per_epoch == 50 and len(labels) == 1600
    full = data.load_digits_images(8, "train")[1]
    assert np.bincount(labels, minlength=10).sum() == 1600
    assert np.all(np.bincount(labels, minlength=10) <= np.bincount(full, minlength=10))


def test_digits_resized_and_process_split():
    x, y = data.load_digits_images(16, "train")
    assert x.shape == (1617, 16, 16, 1) and y.shape == (1617,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    xt, _ = data.load_digits_images(8, "test")
    assert xt.shape == (180, 8, 8, 1)
    parts = [data.process_slice(1617, i, 3) for i in range(3)]
    idx = np.concatenate([np.arange(1617)[p] for p in parts])
    np.testing.assert_array_equal(idx, np.arange(1617))  # disjoint and complete
    b0 = data.get_dataset("DIGITS", split="train", batch_size=8, image_size=8, training=False,
                          process_index=0, process_count=2).batch(0)
    b1 = data.get_dataset("DIGITS", split="train", batch_size=8, image_size=8, training=False,
                          process_index=1, process_count=2).batch(0)
    np.testing.assert_array_equal(b0["image"], x_8 := data.load_digits_images(8, "train")[0][:8])
    np.testing.assert_array_equal(b1["image"], data.load_digits_images(8, "train")[0][808:816])
    assert x_8.shape == (8, 8, 8, 1)
    rgb = data.get_dataset("DIGITS", split="test", batch_size=4, image_size=8, training=False,
                           num_channels=3).batch(0)["image"]
    assert rgb.shape == (4, 8, 8, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_flip_and_dequantization():
    x = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 3)).astype(np.float32) / 255.0
    y = data.augment(x, np.random.default_rng(1), random_flip=True, uniform_dequantization=False)
    flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(y == x, axis=(1, 2, 3))
    assert np.all(flipped | same) and 16 < flipped.sum() < 48
    z = data.augment(x, np.random.default_rng(1), random_flip=False, uniform_dequantization=True)
    k = np.round(x * 255)
    assert np.all(z >= k / 256 - 1e-6) and np.all(z < (k + 1) / 256 + 1e-6)
    assert data.get_data_scaler(True)(np.float32(0.25)) == -0.5
    assert data.get_data_inverse_scaler(True)(np.float32(-0.5)) == 0.25


def test_tfds_cifar10_and_celeba_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.get_dataset("CIFAR10", split="train", batch_size=4, image_size=16,
                              training=True, random_flip=True, process_index=1, process_count=2)
        b = ds.batch(0)
        assert b["image"].shape == (4, 16, 16, 3) and b["label"].shape == (4,)
        assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
        np.testing.assert_array_equal(b["image"], ds.batch(0)["image"])
        c = data.get_dataset("CELEBA", split="validation", batch_size=2, image_size=64,
                             training=False).batch(0)
        assert c["image"].shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match=r"split 'val' of cifar10 unknown; valid choices"):
        data.get_dataset("CIFAR10", split="val", batch_size=4, image_size=32, training=True)
    with pytest.raises(ValueError, match=r"data.category='kitchenette' is not an LSUN category"):
        data.get_dataset("LSUN", split="train", batch_size=4, image_size=32, training=True,
                         category="kitchenette")


def test_unprepared_tfds_dataset_fails_fast_with_instructions(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(data.DatasetNotAvailableError,
                       match=r"tfds build cifar10 --data_dir .* --file_format array_record"):
        data.get_dataset("CIFAR10", split="train", batch_size=4, image_size=32, training=True,
                         data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 30
    with pytest.raises(data.DatasetNotAvailableError, match=r"tfrecords_path=None"):
        data.get_dataset("FFHQ", split="train", batch_size=4, image_size=256, training=True)
