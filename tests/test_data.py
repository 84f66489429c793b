"""hfcjax.data on the real files in $HFCJAX_DATA_DIR, corrupt copies of them, and tfds mock data."""

import gzip
import shutil

import numpy as np
import pytest

from hfcjax import data


def pickled_labels(data_dir, names):
    """Labels of CIFAR-10 pickles read independently of hfcjax (whatever the size of the copy)."""
    import pickle

    labels = []
    for name in names:
        with open(data_dir / "cifar-10-batches-py" / name, "rb") as f:
            labels += list(pickle.load(f, encoding="bytes")[b"labels"])
    return np.asarray(labels)


def test_cifar10_from_published_pickles(data_dir):
    x, y = data.load("cifar10", "train", source="files")
    train_labels = pickled_labels(data_dir, [f"data_batch_{i}" for i in range(1, 6)])
    assert x.shape == (len(train_labels), 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(y, train_labels)
    np.testing.assert_array_equal(y[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])  # CIFAR-10's first training labels
    xt, yt = data.load("cifar10", "test", data_dir=str(data_dir))
    assert xt.shape == (len(pickled_labels(data_dir, ["test_batch"])), 32, 32, 3)
    np.testing.assert_array_equal(yt[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
    assert 100 < x.mean() < 140  # real photographs, channel-major pickles transposed correctly
    # Channel-major layout: the red plane of the first image is its first 1024 bytes.
    import pickle

    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    np.testing.assert_array_equal(xt[0, :, :, 0].ravel(), raw[:1024])


def test_fashion_mnist_full_from_gzipped_idx():
    x, y = data.load("fashion_mnist", "train")
    assert x.shape == (60000, 28, 28, 1) and y.shape == (60000,)
    assert np.bincount(y).tolist() == [6000] * 10
    xt, _ = data.load("fashion_mnist", "test")
    assert xt.shape == (10000, 28, 28, 1)


def test_plain_idx_reads_like_gzipped(tmp_path, data_dir):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(data_dir / "fashion-mnist" / f"{name}.gz") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    x, y = data.load("fashion_mnist", "test", source="files", data_dir=str(tmp_path))
    x_gz, y_gz = data.load("fashion_mnist", "test", source="files")
    np.testing.assert_array_equal(x, x_gz)
    np.testing.assert_array_equal(y, y_gz)


def test_truncated_idx_is_a_clear_error(tmp_path, data_dir):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    raw = gzip.open(data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").read()
    (folder / "t10k-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    shutil.copy(data_dir / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", folder)
    with pytest.raises(data.DataError, match="truncated or corrupt.*Download it again"):
        data.load("fashion_mnist", "test", data_dir=str(tmp_path))
    (folder / "t10k-images-idx3-ubyte").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:1000])  # cut gzip stream
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_corrupt_cifar_pickle_is_a_clear_error(tmp_path, data_dir):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-batches-py", folder)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(data.DataError, match="test_batch is corrupt"):
        data.load("cifar10", "test", data_dir=str(tmp_path))
    (folder / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="data_batch_3 is missing"):
        data.load("cifar10", "train", data_dir=str(tmp_path))


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCJAX_DATA_DIR", str(tmp_path / "nothing"))
    with pytest.raises(data.DataError, match="looked in: .*nothing/cifar-10-batches-py.*CIFAR-10 python version"):
        data.load("cifar10", "train", source="files")


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load("imagenet", "train")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load("cifar10", "validation")
    with pytest.raises(ValueError, match="unknown source"):
        data.load("cifar10", "train", source="web")


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        x, y = data.load("cifar10", "train", source="tfds")
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int32 and ((0 <= y) & (y < 10)).all()


def test_batches_are_seeded_per_epoch():
    images = np.arange(23)[:, None, None, None].astype(np.uint8)
    labels = np.arange(23, dtype=np.int32)
    epoch1 = [b[1] for b in data.batches(images, labels, 5, seed=7, epoch=1)]
    again = [b[1] for b in data.batches(images, labels, 5, seed=7, epoch=1)]
    epoch2 = [b[1] for b in data.batches(images, labels, 5, seed=7, epoch=2)]
    assert len(epoch1) == 4  # drop_remainder
    assert all((a == b).all() for a, b in zip(epoch1, again))
    assert not all((a == b).all() for a, b in zip(epoch1, epoch2))
    # One epoch's batches are a partition of a permutation of the examples.
    assert sorted(np.concatenate(epoch1).tolist()) == sorted(data.epoch_order(23, 7, 1)[:20].tolist())
    padded = list(data.batches(images, labels, 5, shuffle=False, drop_remainder=False))
    assert len(padded) == 5 and padded[-1][2].tolist() == [1, 1, 1, 0, 0]
    assert sorted(np.concatenate([b[1][b[2] > 0] for b in padded]).tolist()) == list(range(23))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(images, labels, 0))
    with pytest.raises(ValueError, match="larger than the split"):
        data.subset(images, labels, 24)


def test_wrong_image_shapes_are_a_clear_error(tmp_path, data_dir):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-batches-py", folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((5, 1000), np.uint8), b"labels": [0] * 5}, f, protocol=2)
    with pytest.raises(data.DataError, match=r"shape \(5, 1000\).*expected \[N, 3072\]"):
        data.load("cifar10", "test", data_dir=str(tmp_path))
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1, 2, 3, 12]}, f, protocol=2)
    with pytest.raises(data.DataError, match=r"labels outside \[0, 10\)"):
        data.load("cifar10", "test", data_dir=str(tmp_path))
