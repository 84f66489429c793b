"""Datasets as uint8 NHWC arrays, read from the datasets' own published files or tfds.

`load(name, split)` returns ``(images uint8 [N, H, W, C], labels int32 [N])``.
`batches(...)` iterates over an in-memory dataset in seeded, per-epoch shuffled
batches; a batch is fully determined by (seed, epoch, step), so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "test")
SOURCES = ("auto", "files", "tfds")


class DataError(RuntimeError):
    """A dataset could not be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one dataset."""

    name: str
    folder: str  # folder name of the published files
    shape: Tuple[int, int, int]  # H, W, C
    num_classes: int
    read: Callable[[Path, str, "DatasetSpec"], Tuple[np.ndarray, np.ndarray]]
    tfds_name: str
    marker: str  # glob matching the published files
    how_to_get: str
    class_names: Tuple[str, ...] = ()


# --------------------------------------------------------------------------- readers


def _unreadable(path: Path) -> str:
    return (f"cannot read {path}: permission denied. Make it readable for this user (e.g. chmod a+r) or point "
            "HFCJAX_DATA_DIR at a copy you can read.")


def _read_cifar10(folder: Path, split: str, spec: DatasetSpec):
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


def _read_mnist_like(folder: Path, split: str, spec: DatasetSpec):
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


DATASETS: Dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", "cifar-10-batches-py", (32, 32, 3), 10, _read_cifar10, "cifar10", "*_batch*",
        "Get 'CIFAR-10 python version' (cifar-10-python.tar.gz) from the CIFAR-10 website, unpack it so that "
        "DIR/cifar-10-batches-py/data_batch_1 exists, and set HFCJAX_DATA_DIR=DIR (or pass data_dir).",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "mnist": DatasetSpec(
        "mnist", "mnist", (28, 28, 1), 10, _read_mnist_like, "mnist", "*-ubyte*",
        "Put the four MNIST IDX files (train-images-idx3-ubyte.gz ...) in DIR/mnist/ and set "
        "HFCJAX_DATA_DIR=DIR, or install Debian's dataset-mnist package.",
        tuple(str(i) for i in range(10)),
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "fashion-mnist", (28, 28, 1), 10, _read_mnist_like, "fashion_mnist", "*-ubyte*",
        "Put the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...) in DIR/fashion-mnist/ and set "
        "HFCJAX_DATA_DIR=DIR, or `apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).",
        ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The DatasetSpec of `name`, or a clear error listing the known datasets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name]


def candidate_dirs(spec: DatasetSpec, data_dir: Optional[str] = None) -> Sequence[Path]:
    """Folders searched for `spec`'s files, in order."""
    roots = [r for r in (data_dir, os.environ.get("HFCJAX_DATA_DIR")) if r]
    dirs = []
    for root in roots:
        root = Path(root).expanduser()
        dirs += [root / spec.folder, root]
    dirs.append(Path("/usr/share/datasets") / spec.folder)
    return dirs


def _find_files(spec: DatasetSpec, data_dir: Optional[str]) -> Optional[Path]:
    """The first candidate folder holding any of `spec`'s files."""
    for d in candidate_dirs(spec, data_dir):
        if d.is_dir() and any(d.glob(spec.marker)):
            return d
    return None


def _load_tfds(spec: DatasetSpec, split: str, data_dir: Optional[str]):
    try:
        import tensorflow_datasets as tfds  # heavy: imported only on this path
    except ImportError:
        raise DataError("source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets") from None
    try:
        source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir)
        records = [source[i] for i in range(len(source))]
    except Exception as e:
        raise DataError(
            f"tensorflow-datasets could not provide {spec.tfds_name}/{split} ({type(e).__name__}: {e}). "
            f"Preparing a tfds dataset needs internet and `pip install hfcjax[tfds]`; or use the published "
            f"files instead: {spec.how_to_get}"
        ) from None
    images = np.stack([np.asarray(r["image"], dtype=np.uint8) for r in records])
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    return images, labels


def load(name: str, split: str, *, source: str = "auto", data_dir: Optional[str] = None):
    """Loads a whole split as ``(images uint8 [N, H, W, C], labels int32 [N])``.

    ``source="files"`` reads the published files from `data_dir`, ``$HFCJAX_DATA_DIR`` or
    ``/usr/share/datasets/<folder>``; ``"tfds"`` uses tensorflow-datasets; ``"auto"`` picks
    the files when present, else tfds.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}.")
    folder = _find_files(spec, data_dir) if source in ("auto", "files") else None
    if folder is not None:
        images, labels = spec.read(folder, split, spec)
    elif source == "files":
        looked = ", ".join(str(d) for d in candidate_dirs(spec, data_dir))
        raise DataError(f"no {name} files found; looked in: {looked}. {spec.how_to_get}")
    else:
        images, labels = _load_tfds(spec, split, data_dir)
    if images.shape[1:] != spec.shape:
        raise DataError(f"{name}/{split}: images have shape {images.shape[1:]}, expected {spec.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{name}/{split}: labels outside [0, {spec.num_classes}).")
    return images, labels


# --------------------------------------------------------------------------- batching


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The example order of one epoch, a pure function of (seed, epoch)."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(images, labels, mask)`` batches of one epoch.

    Every batch has exactly `batch_size` rows (fixed shapes: one compilation). Without
    `drop_remainder` the last batch is padded with copies of row 0 and `mask` is 0 there.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    n = len(images)
    order = epoch_order(n, seed, epoch, shuffle)
    for step in range(steps_per_epoch(n, batch_size, drop_remainder)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        mask = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            mask[len(idx) :] = 0.0
            idx = np.concatenate([idx, np.full(batch_size - len(idx), order[0])])
        yield images[idx], labels[idx], mask


def subset(images: np.ndarray, labels: np.ndarray, size: Optional[int]):
    """The first `size` examples (all when size is None or 0)."""
    if size is None or size <= 0:
        return images, labels
    if size > len(images):
        raise ValueError(f"subset size {size} is larger than the split ({len(images)} examples).")
    return images[:size], labels[:size]
