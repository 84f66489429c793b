"""Where the frequency split spends its time, and candidate forms of it (issue 26, item 1).

    python -m benchmarks.profile_split [--n 50000] [--radius 8] [--out FILE.md]

Times on `n` real CIFAR images (default 50k on a GPU, 2k elsewhere): a copy (``x * 1.0001``: read x,
write one array), the default split (band-limited matmul), the rfft2 split, and a candidate matmul
written as einsums over the NHWC layout (no transposes to NCHW); each candidate must equal the
default to 1e-5. Bandwidth = 3 x bytes(x) / time (read x, write low and high) over the copy's
2 x bytes(x) / time. Then traces the default once and prints each XLA op kind's share
(`benchmarks.profile_step.op_times`).
"""

from __future__ import annotations

import argparse
import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import profile_step
from benchmarks.common import best_time, cifar_images, on_gpu
from hfcjax import frequency, reports


def nhwc_matmul_split(images, radius: float):
    """The default's four GEMMs as einsums on NHWC (XLA picks the layouts)."""
    height, width = images.shape[1:3]
    ay, by, wy = frequency._real_basis(height, radius)
    ax, bx, wx = frequency._real_basis(width, radius)
    keep = (np.sqrt(ay[:, None] ** 2 + ax[None, :] ** 2) <= radius).astype(np.float32)
    gain = np.tile(keep * (wy[:, None] * wx[None, :] / (height * width)), (2, 2)).astype(np.float32)
    es = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
    t = es("nhwc,wk->nhkc", images, bx)
    y = es("nhkc,hj->njkc", t, by) * gain[None, :, :, None]
    t = es("njkc,hj->nhkc", y, by)
    low = es("nhkc,wk->nhwc", t, bx)
    return low, images - low


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--radius", type=float, default=8.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n = args.n or (50_000 if on_gpu() else 2_000)
    x = jax.device_put(cifar_images(n).astype(np.float32) / 255)
    r = args.radius
    nbytes = x.size * 4
    copy = jax.jit(lambda v: v * 1.0001)
    t_copy = best_time(lambda: jax.block_until_ready(copy(x)), reps=10)
    copy_bw = 2 * nbytes / t_copy
    default = jax.jit(lambda v: frequency.split(v, r))
    reference = np.asarray(default(x)[0])
    rows = [["copy (read x, write x)", f"{t_copy * 1e3:.3f}", f"{copy_bw / 1e9:.0f}", "1.00", "-"]]
    for name, fn in [("default (band-limited matmul)", lambda v: frequency.split(v, r)),
                     ("rfft2 (traced radius)", lambda v: frequency.split(v, jnp.float32(r))),
                     ("matmul as NHWC einsums", lambda v: nhwc_matmul_split(v, r))]:
        f = jax.jit(fn)
        err = float(np.max(np.abs(np.asarray(f(x)[0]) - reference)))
        t = best_time(lambda: jax.block_until_ready(f(x)), reps=10)
        bw = 3 * nbytes / t
        rows.append([name, f"{t * 1e3:.3f}", f"{bw / 1e9:.0f}", f"{bw / copy_bw:.2f}", f"{err:.1e}"])
    table = reports.markdown_table(["split of %d CIFAR images, r=%g" % (n, r), "ms", "GB/s", "of copy bandwidth",
                                    "max |low - default|"], rows)
    print(table, flush=True)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.block_until_ready(default(x))
        with jax.profiler.trace(trace_dir):
            for _ in range(3):
                jax.block_until_ready(default(x))
        totals = profile_step.op_times(trace_dir)
    total = sum(totals.values()) or 1
    ops = reports.markdown_table(["op (default split, 3 calls)", "ms per call", "share"],
                                 [[k, f"{v / 3e3:.3f}", f"{v / total:.2f}"] for k, v in totals.most_common(12)])
    print("\n" + ops, flush=True)
    if args.out:
        reports.atomic_write(args.out, table + "\n\n" + ops + "\n")


if __name__ == "__main__":
    main()
