"""Where the ResNet-18 train step spends its time: a jax.profiler trace grouped by XLA op kind.

    python -m benchmarks.profile_step [--batch 100] [--dtype float32] [--steps 2] [--convs] [--out FILE.md]

Runs the real jitted step (hfcjax.train.Trainer, BatchNorm, Adam) on real CIFAR images,
traces `--steps` steps with per-op trace events (on CPUs this needs
XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true, which the script sets before JAX starts) and
prints each op kind's share of the step (fusion names with their numeric suffix removed:
``ynn_fusion`` = YNNPACK convolutions/dots on CPU, ``transpose_copy_fusion`` = layout copies,
``convolution-base-dilated`` = strided backward-data convolutions, ``*_fusion`` = elementwise).
With ``--convs`` it also times one 3x3 convolution of each ResNet-18 stage, forward and
forward+backward, in JAX (``lax.conv_general_dilated``, NHWC) and in PyTorch (``conv2d``, NCHW),
with the same number of threads: the convolutions alone, without the rest of the network.
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

from hfcjax import reports

TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"


def op_times(trace_dir: str) -> collections.Counter:
    """Total microseconds per op kind over the trace's complete ('X') events, runtime frames excluded.

    On a GPU only the device's streams count (kernels, named by the XLA op in ``args.hlo_op``
    when the trace has it, else by the kernel name); on a CPU the XLA ops are host events.
    """
    path = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and "/device:gpu" in str(e.get("args", {}).get("name", "")).lower()}
    totals = collections.Counter()
    for event in events:
        name = str((event.get("args") or {}).get("hlo_op") or event.get("name", ""))
        if event.get("ph") != "X" or name.startswith(("$", "ThunkExecutor", "PjitFunction")):
            continue
        if devices and event.get("pid") not in devices:
            continue
        totals[re.sub(r"[._]\d+$", "", name)[:80]] += event.get("dur", 0)
    return totals


def conv_rows(batch: int):
    """(stage, JAX fwd s, JAX fwd+bwd s, torch fwd s, torch fwd+bwd s) for each ResNet-18 stage's 3x3 conv."""
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks.common import best_time

    torch.set_num_threads(os.cpu_count())
    rows = []
    for size, channels in [(32, 64), (16, 128), (8, 256), (4, 512)]:
        x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
        w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.05
        conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        fwd = jax.jit(conv)
        both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
        j_f = best_time(lambda: jax.block_until_ready(fwd(x, w)), reps=3)
        j_b = best_time(lambda: jax.block_until_ready(both(x, w)), reps=3)
        tx = torch.randn(batch, channels, size, size, requires_grad=True)
        tw = torch.randn(channels, channels, 3, 3, requires_grad=True)
        with torch.no_grad():
            t_f = best_time(lambda: torch.nn.functional.conv2d(tx, tw, padding=1), reps=3)
        t_b = best_time(lambda: (torch.nn.functional.conv2d(tx, tw, padding=1) ** 2).sum().backward(), reps=3)
        rows.append((f"{size}x{size}x{channels}", j_f, j_b, t_f, t_b))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--convs", action="store_true", help="also time each stage's 3x3 conv vs PyTorch")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    if TRACEME_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TRACEME_FLAG).strip()

    import jax

    from benchmarks.bench_train import step_inputs
    from benchmarks.common import machine

    with tempfile.TemporaryDirectory() as tmp:
        trainer, state, totals, x, y = step_inputs(args.batch, args.dtype, args.steps, os.path.join(tmp, "run"))
        state, totals = trainer.train_step(state, totals, x, y)  # compile outside the trace
        jax.block_until_ready(totals)
        trace_dir = os.path.join(tmp, "trace")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, totals = trainer.train_step(state, totals, x, y)
            jax.block_until_ready(totals)
        times = op_times(trace_dir)
    total = sum(times.values())
    ops = [[name, f"{us / 1e3 / args.steps:,.1f}", f"{us / total:.1%}"] for name, us in times.most_common(12)]
    lines = [f"Profile of the ResNet-18 train step, batch {args.batch}, {args.dtype}; {machine()}", "",
             reports.markdown_table(["op kind", "op time per step, ms (summed over threads)", "share"],
                                    ops + [["all ops", f"{total / 1e3 / args.steps:,.1f}", "100%"]])]
    if args.convs:
        convs = [[name, f"{j_f * 1e3:.0f}", f"{t_f * 1e3:.0f}", f"{j_f / t_f:.2f}", f"{j_b * 1e3:.0f}",
                  f"{t_b * 1e3:.0f}", f"{j_b / t_b:.2f}"] for name, j_f, j_b, t_f, t_b in conv_rows(args.batch)]
        lines += ["", f"One 3x3 convolution per ResNet-18 stage, batch {args.batch}, float32 (ms; ratio = JAX / PyTorch):",
                  "", reports.markdown_table(["activation", "JAX fwd", "PyTorch fwd", "ratio", "JAX fwd+bwd",
                                              "PyTorch fwd+bwd", "ratio"], convs)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        reports.atomic_write(args.out, text)


if __name__ == "__main__":
    from hfcjax import backend

    backend.use_huge_pages()
    main()
