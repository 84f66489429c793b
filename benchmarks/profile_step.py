"""Where the ResNet-18 train step spends its time: a jax.profiler trace grouped by XLA op kind.

    python -m benchmarks.profile_step [--batch 100] [--dtype float32] [--steps 2] [--out FILE.md]

Runs the real jitted step (hfcjax.train.Trainer, BatchNorm, Adam) on real CIFAR images,
traces `--steps` steps with per-op trace events (on CPUs this needs
XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true, which the script sets before JAX starts) and
prints each op kind's share of the step (fusion names with their numeric suffix removed:
``ynn_fusion`` = YNNPACK convolutions/dots on CPU, ``transpose_copy_fusion`` = layout copies,
``convolution-base-dilated`` = strided backward-data convolutions, ``*_fusion`` = elementwise).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"


def op_times(trace_dir: str) -> collections.Counter:
    """Total microseconds per op kind over the trace's complete ('X') events, runtime frames excluded."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(("$", "ThunkExecutor", "PjitFunction")):
            continue
        totals[re.sub(r"\.\d+$", "", name)] += event.get("dur", 0)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    if TRACEME_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TRACEME_FLAG).strip()

    import jax

    from benchmarks.bench_train import bench_config
    from benchmarks.common import machine
    from hfcjax import data, sharding, train

    with tempfile.TemporaryDirectory() as tmp:
        trainer = train.Trainer(bench_config(args.batch, args.dtype, args.steps), os.path.join(tmp, "run"))
        state = trainer.init()
        acc = jax.device_put(train.zero_accumulator(), trainer.repl)
        images, labels, _ = next(data.batches(trainer.train_images, trainer.train_labels, args.batch, epoch=0))
        x, y = sharding.global_batch(trainer.batch_sh, images, labels)
        state, acc = trainer.train_step(state, acc, x, y)  # compile outside the trace
        jax.block_until_ready(acc)
        trace_dir = os.path.join(tmp, "trace")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, acc = trainer.train_step(state, acc, x, y)
            jax.block_until_ready(acc)
        totals = op_times(trace_dir)
    total = sum(totals.values())
    lines = [f"Profile of the ResNet-18 train step, batch {args.batch}, {args.dtype}; {machine()}", "",
             "| op kind | op time per step, ms (summed over threads) | share |", "|---|---|---|"]
    for name, us in totals.most_common(12):
        lines.append(f"| {name} | {us / 1e3 / args.steps:,.1f} | {us / total:.1%} |")
    lines.append(f"| all ops | {total / 1e3 / args.steps:,.1f} | 100% |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
