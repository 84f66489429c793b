"""Datasets as uint8 NHWC arrays, read from the datasets' own published files or tfds.

`load(name, split)` returns ``(images uint8 [N, H, W, C], labels int32 [N])``. Files are
looked for in `data_dir`, ``$HFCJAX_DATA_DIR``, ``/usr/share/datasets`` and the cache
(``$HFCJAX_CACHE_DIR``, default ``~/.cache/hfcjax``); when none holds them, the original
files are downloaded once into the cache from their canonical host (or the mirror
``$HFCJAX_DATA_URL``, laid out as ``MIRROR/fashion-mnist/*.gz``, ``MIRROR/mnist/*.gz``,
``MIRROR/cifar-10-python.tar.gz``) and verified by sha256 (`hfcjax.download`);
``HFCJAX_DOWNLOAD=0`` forbids that.
`batches(...)` iterates over an in-memory dataset in seeded, per-epoch shuffled
batches; a batch is fully determined by (seed, epoch, step), so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from hfcjax import download, formats
from hfcjax.formats import DataError  # noqa: F401 - the error of this module, raised by the readers too
from hfcjax.errors import UserError

SPLITS = ("train", "test")
SYSTEM_DIR = Path("/usr/share/datasets")  # where Debian's dataset-* packages install
SOURCES = ("auto", "files", "tfds")


@dataclasses.dataclass(frozen=True)
class Remote:
    """Where a dataset's published files come from: each of `files` (name, accepted checks)
    at `url`/name, or at MIRROR/`mirror_folder`name under ``$HFCJAX_DATA_URL``; a tar
    archive's `archive_root` folder is unpacked (and the archive removed)."""

    url: str
    files: Tuple[Tuple[str, Tuple[download.Check, ...]], ...]
    mirror_folder: str = ""
    archive_root: Optional[str] = None


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
    remote: Optional[Remote] = None


def _idx_files(archive_sha256: Dict[str, str], content_sha256: Optional[Dict[str, str]] = None):
    content_sha256 = content_sha256 or {}
    return tuple((name, (download.Check(sha),) + ((download.Check(content_sha256[name], gunzip=True),)
                                                   if name in content_sha256 else ()))
                 for name, sha in archive_sha256.items())


DATASETS: Dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", "cifar-10-batches-py", (32, 32, 3), 10, formats.read_cifar10, "cifar10", "*_batch*",
        "Get 'CIFAR-10 python version' (cifar-10-python.tar.gz) from the CIFAR-10 website, unpack it so that "
        "DIR/cifar-10-batches-py/data_batch_1 exists, and set HFCJAX_DATA_DIR=DIR (or pass data_dir).",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        Remote("https://www.cs.toronto.edu/~kriz", (("cifar-10-python.tar.gz", (download.Check(
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),)),),
            archive_root="cifar-10-batches-py"),
    ),
    "mnist": DatasetSpec(
        "mnist", "mnist", (28, 28, 1), 10, formats.read_mnist_like, "mnist", "*-ubyte*",
        "Put the four MNIST IDX files (train-images-idx3-ubyte.gz ...) in DIR/mnist/ and set "
        "HFCJAX_DATA_DIR=DIR, or install Debian's dataset-mnist package.",
        tuple(str(i) for i in range(10)),
        Remote("https://storage.googleapis.com/cvdf-datasets/mnist", _idx_files({  # tfds's checksums
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}),
            mirror_folder="mnist/"),
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "fashion-mnist", (28, 28, 1), 10, formats.read_mnist_like, "fashion_mnist", "*-ubyte*",
        "Put the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...) in DIR/fashion-mnist/ and set "
        "HFCJAX_DATA_DIR=DIR, or `apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).",
        ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
        Remote("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com", _idx_files({  # tfds's checksums
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"}, {
            # the same IDX bytes gunzipped (Debian's dataset-fashion-mnist re-compressed them)
            "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"}),
            mirror_folder="fashion-mnist/"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The DatasetSpec of `name`, or a clear error listing the known datasets."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name]


def candidate_dirs(spec: DatasetSpec, data_dir: Optional[str] = None) -> Sequence[Path]:
    """Folders searched for `spec`'s files, in order."""
    roots = [r for r in (data_dir, os.environ.get("HFCJAX_DATA_DIR")) if r]
    dirs = []
    for root in roots:
        root = Path(root).expanduser()
        dirs += [root / spec.folder, root]
    dirs.append(SYSTEM_DIR / spec.folder)
    dirs.append(cache_dir() / spec.folder)  # last: `locate` relies on it
    return dirs


def cache_dir() -> Path:
    """Where downloaded datasets live: ``$HFCJAX_CACHE_DIR`` or ``~/.cache/hfcjax``."""
    return Path(os.environ.get("HFCJAX_CACHE_DIR") or "~/.cache/hfcjax").expanduser()


def fetch(spec: DatasetSpec, log: Callable[[str], None] = print) -> Path:
    """Downloads `spec`'s published files into the cache (verified; see `hfcjax.download`)
    and returns the folder holding them; a DataError line when that is impossible."""
    remote, folder = spec.remote, cache_dir() / spec.folder
    looked = ", ".join(str(d) for d in candidate_dirs(spec, None))
    if remote is None:
        raise DataError(f"no {spec.name} files in {looked} and it has no download. {spec.how_to_get}")
    if os.environ.get("HFCJAX_DOWNLOAD", "1") == "0":
        raise DataError(f"no {spec.name} files in {looked}, and downloads are off (HFCJAX_DOWNLOAD=0). "
                        f"{spec.how_to_get}")
    mirror = os.environ.get(download.URL_VARIABLE, "").rstrip("/")
    try:
        for name, checks in remote.files:
            url = f"{mirror}/{remote.mirror_folder}{name}" if mirror else f"{remote.url}/{name}"
            target = (cache_dir() if remote.archive_root else folder) / name
            if not target.exists() and not (remote.archive_root and folder.is_dir()):
                log(f"{spec.name}: downloading {url} into {target.parent}")
            if remote.archive_root:
                if not folder.is_dir():
                    download.extract_tar(download.fetch(url, target, checks, log), folder, remote.archive_root)
                target.unlink(missing_ok=True)
            else:
                download.fetch(url, target, checks, log)
    except download.DownloadError as e:
        raise DataError(f"no {spec.name} files in {looked}, and {e}. Offline? {spec.how_to_get}") from None
    return folder


def locate(name: str, data_dir: Optional[str] = None, *, download: bool = True) -> Path:
    """The first candidate folder holding `name`'s published files; with `download`, when
    none does, they are fetched into the cache first. A DataError line otherwise."""
    spec = get_spec(name)
    dirs = candidate_dirs(spec, data_dir)
    for d in dirs[:-1]:
        if d.is_dir() and any(d.glob(spec.marker)):
            return d
    if download:  # also completes a cache an interrupted download left partial
        return fetch(spec)
    if dirs[-1].is_dir() and any(dirs[-1].glob(spec.marker)):
        return dirs[-1]
    looked = ", ".join(str(d) for d in candidate_dirs(spec, data_dir))
    raise DataError(f"no {name} files found; looked in: {looked}. {spec.how_to_get}")


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

    ``source="files"`` reads the published files from `data_dir`, ``$HFCJAX_DATA_DIR``,
    ``/usr/share/datasets/<folder>`` or the cache; ``"auto"`` does the same and, when no folder
    holds them, downloads them into the cache first (`fetch`); ``"tfds"`` uses
    tensorflow-datasets (which prepares a dataset from the internet on first use).
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {SPLITS}.")
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of {SOURCES}.")
    folder = locate(name, data_dir, download=source == "auto") if source in ("auto", "files") else None
    if folder is not None:
        images, labels = spec.read(folder, split, spec)
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
    start_step: int = 0,
) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(images, labels, mask)`` batches of one epoch, from batch `start_step` on
    (a run resumed mid-epoch gets the batches it had not seen, in the same order).

    Every batch has exactly `batch_size` rows (fixed shapes: one compilation). Without
    `drop_remainder` the last batch is padded with copies of row 0 and `mask` is 0 there.
    """
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}.")
    n = len(images)
    order = epoch_order(n, seed, epoch, shuffle)
    for step in range(start_step, steps_per_epoch(n, batch_size, drop_remainder)):
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
        raise UserError(f"subset size {size} is larger than the split ({len(images)} examples).")
    return images[:size], labels[:size]
