"""Reading the datasets' published file formats: CIFAR-10's python pickles and the IDX files
of (Fashion-)MNIST. `spec` is the dataset's `data.DatasetSpec` (its name and how to get
the files, for the message). Every failure is one `DataError` line saying what to do."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np

from hfcjax.errors import UserError


class DataError(UserError):
    """A dataset could not be found or read; the message says what to do."""


def _unreadable(path: Path) -> str:
    return (f"cannot read {path}: permission denied. Make it readable for this user (e.g. chmod a+r) or point "
            "HFCJAX_DATA_DIR at a copy you can read.")


def read_cifar10(folder: Path, split: str, spec) -> Tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's python pickles: uint8 [N, 32, 32, 3] images and int32 labels of `split`."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 file {path} is missing. {spec.how_to_get}")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[b"labels"], dtype=np.int32)
        except PermissionError:
            raise DataError(_unreadable(path)) from None
        except Exception as e:  # truncated pickle, wrong keys, ...
            raise DataError(
                f"CIFAR-10 file {path} is corrupt or not a CIFAR-10 python pickle ({type(e).__name__}: {e}). "
                f"Download it again. {spec.how_to_get}"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != batch_labels.shape[0]:
            raise DataError(
                f"CIFAR-10 file {path} holds data of shape {data.shape} and {batch_labels.shape[0]} labels; "
                "expected [N, 3072] and N labels. Download it again."
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def _read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (gzipped or plain), checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except PermissionError:
        raise DataError(_unreadable(path)) from None
    except (OSError, EOFError) as e:
        raise DataError(f"IDX file {path} is corrupt or truncated ({e}). Download it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number). Download it again.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path} is truncated or corrupt: header says {dims} ({expected} bytes), "
            f"file has {len(raw)} bytes. Download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist_like(folder: Path, split: str, spec) -> Tuple[np.ndarray, np.ndarray]:
    """(Fashion-)MNIST's IDX files: uint8 [N, 28, 28, 1] images and int32 labels of `split`."""
    prefix = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        for suffix in (".gz", ""):
            path = folder / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte{suffix}"
            if path.is_file():
                return path
        raise DataError(f"{spec.name}: no {prefix} {kind} IDX file in {folder}. {spec.how_to_get}")

    images = _read_idx(find("images"))
    labels = _read_idx(find("labels")).astype(np.int32)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{spec.name} in {folder}: {images.shape[0]} images but {labels.shape[0]} labels.")
    return images[..., None], labels
