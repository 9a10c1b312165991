"""Datasets: real embedded digits, deterministic resumable batches, per-process slices,
scaling, toy sets, TFDS via mock data, and a fast error for unprepared datasets."""

import numpy as np
import pytest

from sde_lab import data


def test_digits_are_the_real_sklearn_digits():
    splits = data.load_digits()
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (1500, 297)
    assert train.data.shape[1:] == (8, 8, 1) and train.data.min() == 0 and train.data.max() == 16
    assert set(np.unique(train.labels)) == set(range(10))
    from sklearn.datasets import load_digits

    # The two splits partition the 1,797 images.
    both = np.concatenate([train.data, test.data]).reshape(1797, 64)
    ref = load_digits().images.reshape(1797, 64).astype(np.int32)
    assert sorted(map(bytes, both.astype(np.int8))) == sorted(map(bytes, ref.astype(np.int8)))


def test_batches_are_deterministic_per_step_and_cover_each_epoch():
    ds = data.make("digits", "train", num_levels=17)
    a, b = ds.batch(7, 100), data.make("digits", "train", num_levels=17).batch(7, 100)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(ds.batch(8, 100)["x"], a["x"])
    # 15 steps of 100 are exactly one epoch: every training image once.
    idx = np.concatenate([ds._positions(s, 100) for s in range(15)])
    assert sorted(idx) == list(range(1500))


def test_process_slices_partition_the_global_batch():
    ds = data.make("digits", "train", num_levels=17, random_flip=True,
                   uniform_dequantization=True)
    full = ds.batch(3, 64)
    parts = [ds.batch(3, 64, process_index=i, process_count=4) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), full["x"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), full["label"])


def test_scaler():
    s = data.Scaler(num_levels=17, centered=True)
    k = np.arange(17)
    x = s.to_model(k)
    np.testing.assert_allclose(x[[0, 8, 16]], [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(s.to_levels(x), k)
    u = np.full(17, 0.5)
    np.testing.assert_allclose(s.to_model(k, u), 2 * (k + 0.5) / 17 - 1, rtol=1e-6)
    assert s.scale == 2.0 and data.Scaler(256, centered=False).scale == 1.0
    np.testing.assert_array_equal(s.to_uint8(np.array([-1.0, 1.0])), [0, 255])


def test_toy_sets():
    rng = np.random.default_rng(0)
    cb = data.toy_distribution("checkerboard").sample(rng, 20000)
    assert np.all(np.abs(cb) <= 2)
    # Black squares: floor(x1) + floor(x2) is even.
    assert np.all((np.floor(cb[:, 0]) + np.floor(cb[:, 1])) % 2 == 0)
    gmm = data.toy_distribution("gmm").sample(rng, 40000)
    np.testing.assert_allclose(gmm.mean(0), [0, 0], atol=5 * 1.5 / np.sqrt(40000))
    radius = np.linalg.norm(gmm, axis=1)
    assert abs(np.median(radius) - 2.0) < 0.05
    moons = data.toy_distribution("moons").sample(rng, 1000)
    assert moons.shape == (1000, 2)
    with pytest.raises(ValueError, match=r"unknown toy set 'ring'; available: \['gmm'"):
        data.toy_distribution("ring")


def test_tfds_mock_cifar10_through_data_source():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        ds = data.make("cifar10", "train", num_levels=256, image_size=32, random_flip=True)
        batch = ds.batch(0, 8)
    assert batch["x"].shape == (8, 32, 32, 3) and batch["x"].dtype == np.float32
    assert -1.0 <= batch["x"].min() and batch["x"].max() <= 1.0


def test_unprepared_tfds_dataset_fails_fast_with_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
        data.make("cifar10", "train", data_dir=str(tmp_path))


def test_bad_digits_options():
    with pytest.raises(ValueError, match="digits has splits"):
        data.make("digits", "validation", num_levels=17)
    with pytest.raises(ValueError, match="data.num_levels=17"):
        data.make("digits", "train", num_levels=256)


def test_image_grid_layout():
    imgs = np.stack([np.full((2, 2, 1), i, np.uint8) for i in range(5)])
    grid = data.image_grid(imgs, ncol=3)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 1 and grid[4, 4, 0] == 4 and grid[4, 7, 0] == 255


def test_center_crop_takes_the_central_square():
    levels = np.arange(6 * 6).reshape(1, 6, 6, 1).repeat(4, 0)
    ds = data.Dataset(data.ArraySplit(levels, np.zeros(4, np.int32)),
                      scaler=data.Scaler(256, centered=False), center_crop=2)
    got, _ = ds.levels(0, 1)
    np.testing.assert_array_equal(got[0, :, :, 0], [[14, 15], [20, 21]])
    assert ds.batch(0, 2)["x"].shape == (2, 2, 2, 1)
    with pytest.raises(ValueError, match="data.center_crop=8 is larger than the 6x6 images"):
        data.Dataset(data.ArraySplit(levels, np.zeros(4, np.int32)), scaler=data.Scaler(256),
                     center_crop=8).levels(0, 1)
