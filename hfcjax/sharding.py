"""Data-parallel placement over a device mesh: batches split on 'data', state replicated.

The same code runs on one CPU, on N local devices and on several hosts: each host
passes its own rows of the global batch to `global_batch`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hfcjax import hashing
from hfcjax.errors import UserError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every host."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """The global batch must split evenly over devices and hosts."""
    if batch_size % mesh.size or batch_size % jax.process_count():
        raise UserError(
            f"config.{what}={batch_size} must be divisible by the {mesh.size} devices "
            f"({jax.process_count()} hosts); choose a multiple of {mesh.size}."
        )


def host_rows(batch_size: int) -> slice:
    """The rows of a global batch that this host feeds."""
    per_host = batch_size // jax.process_count()
    start = jax.process_index() * per_host
    return slice(start, start + per_host)


def global_batch(sharding: NamedSharding, *arrays: np.ndarray):
    """Global arrays from full-batch host arrays (each host contributes its own rows)."""
    out = []
    for array in arrays:
        rows = host_rows(array.shape[0])
        out.append(jax.make_array_from_process_local_data(sharding, array[rows], array.shape))
    return out if len(out) > 1 else out[0]


def code_version() -> str:
    """sha256 of hfcjax's own source files: processes of one job must run the same code."""
    return hashing.files_sha256(sorted(Path(__file__).parent.rglob("*.py")))


def check_same_everywhere(**values: str) -> None:
    """With several processes, a ValueError line when any was started with other `values`
    (e.g. config=..., code=...) than process 0; otherwise they would wait in a collective
    for each other forever, or silently train different things."""
    if jax.process_count() == 1:
        return
    for name, value in values.items():
        digest = np.frombuffer(bytes.fromhex(hashing.text_sha256(value)), np.uint8)
        every = np.asarray(multihost_utils.process_allgather(digest))
        other = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
        if other:
            raise UserError(f"process(es) {other} were started with another {name} than process 0; start every "
                             "process of the job with the same command, config and hfcjax version.")
