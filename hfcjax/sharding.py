"""Data-parallel placement over a device mesh: batches split on 'data', state replicated.

The same code runs on one CPU, on N local devices and on several hosts: each host
passes its own rows of the global batch to `global_batch`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
        raise ValueError(
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
