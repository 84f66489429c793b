"""Every backend- or platform-dependent choice hfcjax makes, in one place, with its reason.

The numerics (`frequency`, `attacks`, `measure`) ask this module instead of testing
``jax.default_backend()`` themselves, so a new platform (TPU, a faster XLA:CPU) is tuned
here and nowhere else. The measurements behind each choice are in docs/benchmarks.md;
this module states only what is chosen and why.

Importing this module imports no JAX: `use_huge_pages` must run before anything heavy.
Two choices change JAX itself, process-wide, and say so: `cpu_convolutions_threaded` (run
when hfcjax is imported) and `canonical_conv_gradients`.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Dict, Optional

HUGE_PAGE_MALLOC = "glibc.malloc.hugetlb=1"

# Choice 0 (`cpu_convolutions_threaded`): the XLA flag, and the jaxlib releases known to have it
# (XLA aborts a process whose XLA_FLAGS name a flag it does not know).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_NO_LONE_CONVOLUTIONS = f"{YNN_FLAG}=-INDIVIDUAL_CONVOLUTION"
YNN_FLAG_JAXLIB = ((0, 10), (0, 11))

# Choice 1 (frequency.split): on a CPU, large batches go through the split in blocks of about
# this many bytes, which keeps x, low and high in cache; the transform is memory-bound there.
# Accelerators run one pass over the whole batch.
CPU_SPLIT_BLOCK_BYTES = 4 << 20

_CONV_RULE = {"ours": False}  # whether `canonical_conv_gradients` installed hfcjax's rule


def cpu_convolutions_threaded() -> bool:
    """Choice 0 (run when `hfcjax` is imported): XLA:CPU runs a convolution whose result goes to
    memory (every one of a training step's and an attack's backward pass, a captured feature
    map) through its multi-threaded Eigen kernels, not as a lone YNNPACK fusion.

    jaxlib 0.10 hands every such convolution to YNNPACK (fusion type INDIVIDUAL_CONVOLUTION),
    which ran it on one thread: 2x-3.6x slower than Eigen on 2 cores (docs/benchmarks.md);
    convolutions that YNNPACK fuses with what follows (a whole forward pass into its logits)
    stay in YNNPACK, where they do run threaded. Adds ``YNN_NO_LONE_CONVOLUTIONS`` to
    XLA_FLAGS, before JAX creates its CPU backend (later it would not apply, and nothing is
    changed). Nothing happens when XLA_FLAGS already sets the YNN fusion types (the user's
    choice wins), with HFCJAX_XLA_CPU_TUNING=0, or with a jaxlib not known to have the flag
    (YNN_FLAG_JAXLIB). Accelerators ignore it. Returns whether the flag is (now) in XLA_FLAGS
    by this function's doing or was already."""
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_NO_LONE_CONVOLUTIONS in flags.split():
        return True
    if YNN_FLAG in flags or os.environ.get("HFCJAX_XLA_CPU_TUNING", "1") == "0":
        return False
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and getattr(bridge, "_backends", None):
        return False  # JAX's backends exist: the flag would not reach them
    try:
        from importlib import metadata

        release = tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (ImportError, ValueError, metadata.PackageNotFoundError):
        return False
    if release not in YNN_FLAG_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_NO_LONE_CONVOLUTIONS}".strip()
    return True


def is_cpu() -> bool:
    import jax

    return jax.default_backend() == "cpu"


def split_block_bytes() -> int:
    """Bytes of images per block of `frequency.split`; 0 means one pass over everything."""
    return CPU_SPLIT_BLOCK_BYTES if is_cpu() else 0


def pgd_unroll():
    """Choice 2 (attacks.pgd): how far to unroll PGD's step loop when the caller does not say.

    One (a rolled loop) wherever `canonical_conv_gradients` is in force or off a CPU: PGD-20
    then runs at 0.72-1.01x its forward+backward passes on a CPU, as fast as unrolled, and
    compiles 2-3x faster. Every step on a CPU without it: there a rolled loop ran the backward
    convolutions through XLA:CPU's naive loop nest, 2.2-2.7x the passes' time.
    """
    return True if is_cpu() and not _CONV_RULE["ours"] else 1


UNROLL_LIMIT = 20  # steps: beyond, a fully unrolled loop's compile time outgrows what it saves


def attack_unroll(steps: int):
    """Choice 2b (the AutoAttack attacks: APGD's 100 steps per run, 9 targets each; DeepFool):
    `pgd_unroll`, and a rolled loop beyond UNROLL_LIMIT steps whatever it says (unrolling 100
    APGD steps on a CPU took 64 s to compile for a 784-64-10 MLP where the rolled loop runs in
    about a second). DeepFool rolled also stops as soon as every example crossed; unrolled it
    runs every step."""
    return pgd_unroll() if steps <= UNROLL_LIMIT else 1


def eval_compiler_options() -> Optional[Dict[str, str]]:
    """Choice 3: XLA options for evaluation's compiled passes (the attack grid, the evaluators,
    the prediction report).

    On a CPU whose attack loops are unrolled (`pgd_unroll` is True: JAX's own convolution
    rule in force) the memory-optimized scheduler: the unrolled, independent passes (PGD steps
    for several eps, restarts) otherwise got buffers for many passes at once (25.8 GB for the
    Table-2 grid of the MNIST CNN at batch 200). With the loops rolled, XLA's default
    scheduler, as everywhere else: the same grid then takes 1.5 GB against 0.96 (ResNet-18:
    2.8 against 2.1 GB) and runs a little faster (3% on the grid, 10% on `features`' pass).
    Several CPU processes keep it too: under the default scheduler a two-process evaluation
    hung (each process waiting in a different collective of the grid's independent chains).
    Accelerators: defaults.
    """
    import jax

    if is_cpu() and (pgd_unroll() is True or jax.process_count() > 1):
        return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    return None


# Chunks; beyond it a CPU runs the scan rolled (bounded program size and memory). 128 keeps a
# 32x32 image's 514 bases (65 chunks of 8) unrolled: at 64 its one-call heat map ran rolled, 1.83x
# its forward passes against 1.03x unrolled (about 6 s more compilation; docs/benchmarks.md).
HEATMAP_UNROLL_MAX = 128


def heatmap_unroll(chunks: int):
    """Choice 4 (heatmap): how far to unroll the scan over chunks of Fourier bases. Every
    chunk on a CPU, where any rolled loop around the model's convolutions ran it about 1.6-2x
    slower (as for PGD), up to HEATMAP_UNROLL_MAX chunks so that program size and memory stay
    bounded for any image size; none on accelerators."""
    return True if is_cpu() and chunks <= HEATMAP_UNROLL_MAX else 1


def heatmap_group(num_bases: int) -> int:
    """Choice 5 (evaluation's heat map): bases per compiled call. On a CPU fixed groups of
    64 (the scan inside is unrolled, so a group bounds the program's size and memory, and
    every group reuses one compilation); on accelerators all bases in one call."""
    return 64 if is_cpu() else num_bases


def canonical_conv_gradients(enabled: bool = True) -> bool:
    """Choice 8 (installed when `hfcjax.attacks` is imported): on a CPU, the gradient of a
    convolution with respect to its input as a convolution XLA:CPU runs in its fast kernels.

    JAX transposes ``conv_general_dilated`` into a convolution that reads the kernel with its two
    feature axes swapped (HWIO read as HWOI). XLA:CPU rewrites such a convolution into its
    canonical form only in a program's entry computation (its ConvCanonicalization pass visits
    nothing else), so inside a rolled loop or a `cond` branch (PGD's steps, APGD-T's targets,
    AutoAttack's skip of a finished batch) the backward convolutions ran through a naive loop
    nest, at 2.2-2.7x the time of the same passes outside (PGD-20, docs/benchmarks.md). The rule installed here hands JAX's own
    rule a kernel whose feature axes are physically swapped first (one small transpose), so the
    convolution it builds is canonical wherever it sits. The same numbers (tests: against
    forward-mode differentiation); grouped convolutions and accelerators keep JAX's rule.
    Process-wide and idempotent; ``enabled=False`` puts JAX's own rule back. Returns whether
    hfcjax's rule is in force (False also when this JAX lacks the private names used here)."""
    try:
        from jax._src.interpreters import ad
        from jax._src.lax import convolution as conv

        jax_lhs_rule, rhs_rule = conv._conv_general_dilated_transpose_lhs, conv._conv_general_dilated_transpose_rhs
    except (ImportError, AttributeError):
        return False
    if _CONV_RULE["ours"] != enabled:
        ad.defbilinear(conv.conv_general_dilated_p, _canonical_lhs_rule(jax_lhs_rule, conv) if enabled
                       else jax_lhs_rule, rhs_rule)
        _CONV_RULE["ours"] = enabled
    return enabled


def _canonical_lhs_rule(jax_lhs_rule, conv):
    from jax import lax

    def lhs_rule(g, lhs, rhs, *, dimension_numbers, feature_group_count, batch_group_count, **kw):
        if feature_group_count == 1 and batch_group_count == 1 and is_cpu():
            lhs_spec, rhs_spec, out_spec = dimension_numbers
            perm = list(range(rhs.ndim))
            perm[rhs_spec[0]], perm[rhs_spec[1]] = rhs_spec[1], rhs_spec[0]
            rhs = lax.transpose(rhs, perm)  # JAX's rule swaps the spec back: a canonical kernel
            dimension_numbers = conv.ConvDimensionNumbers(lhs_spec, conv._conv_spec_transpose(rhs_spec), out_spec)
        return jax_lhs_rule(g, lhs, rhs, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                            batch_group_count=batch_group_count, **kw)

    return lhs_rule


def use_huge_pages() -> None:
    """Choice 6 (entry points): restart this process once with glibc's malloc asking for
    transparent huge pages.

    XLA:CPU allocates every large buffer with malloc, which maps fresh 4 KiB pages; huge
    pages make the memory-bound parts (the split, big copies) markedly faster. glibc reads
    the setting only at start-up, hence the restart, done before anything heavy is imported.
    Nothing happens off Linux/glibc, when GLIBC_TUNABLES is already set (the user's choice
    wins), or with HFCJAX_HUGE_PAGES=0.
    """
    if "GLIBC_TUNABLES" in os.environ or os.environ.get("HFCJAX_HUGE_PAGES", "1") == "0":
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    os.environ["GLIBC_TUNABLES"] = HUGE_PAGE_MALLOC
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv[1:]])


def start_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                      process_id: Optional[int] = None, *, heartbeat_timeout_s: int = 100,
                      initialization_timeout_s: int = 300) -> None:
    """Choice 7: JAX's multi-process runtime, `jax.distributed.initialize`, with explicit
    values or (all None) its auto-detection on TPU pods, SLURM, GKE, Open MPI.

    CPU processes exchange collectives through gloo (XLA:CPU has none across processes
    otherwise); accelerators use their own. A process that stops sending heartbeats for
    `heartbeat_timeout_s` is declared dead and the others stop with an error instead of
    waiting in a collective forever.
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=initialization_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
