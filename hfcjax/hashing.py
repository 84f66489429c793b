"""sha256, written once: of a file (streamed), of an open binary stream, of text, and of a
tree of arrays (shapes, dtypes and bytes). Checkpoint checksums, download checks, the
fingerprint of an interrupted evaluation and the code/config agreement of a multi-process
job all use these."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO, Iterable, Union

import numpy as np

CHUNK = 1 << 20


def stream_sha256(f: BinaryIO) -> str:
    """Hex sha256 of what is left to read in the binary stream `f`."""
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Union[str, Path]) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def arrays_sha256(leaves: Iterable) -> str:
    """Hex sha256 of arrays in order: each one's shape, dtype and bytes (host arrays;
    `jax.device_get` a tree's leaves first)."""
    h = hashlib.sha256()
    for leaf in leaves:
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{leaf.shape}{leaf.dtype}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


def files_sha256(paths: Iterable[Path]) -> str:
    """Hex sha256 of files' names and contents, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + Path(path).read_bytes())
    return h.hexdigest()
