"""Timing helpers, machine description and the real images every benchmark uses."""

from __future__ import annotations

import os
import platform
import time

import jax
import numpy as np


def best_time(fn, reps: int = 5, warmup: int = 1) -> float:
    """Best wall time of `fn()` over `reps` runs after `warmup` runs; `fn` must block."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_times(fns, reps: int = 3, warmup: int = 1) -> list:
    """Best wall time of each blocking `fns[i]()` over `reps` rounds after `warmup` rounds; a
    round runs every fn once, in turn, so a slow spell of a shared machine reaches all of them
    alike and their ratio (what a benchmark reports) stays put."""
    best = [float("inf")] * len(fns)
    for r in range(warmup + reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            if r >= warmup:
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def random_model(arch: str, batch: int, **options):
    """(logits(variables, x), variables, x): model `arch` of hfcjax.models with random weights (key 0)
    in inference mode, and `batch` real CIFAR-10 images as floats in [0, 1]."""
    import jax.numpy as jnp

    from hfcjax import models

    model = models.create_model(arch, 10, **options)
    x = jnp.asarray(cifar_images(batch), jnp.float32) / 255
    variables = model.init(jax.random.key(0), x[:1])
    return (lambda v, z: model.apply(v, z, train=False)), variables, x


def pass_times(logits, variables, x, y, reps: int = 5):
    """(forward, forward+backward): best times of one jitted forward pass (the argmax of
    ``logits(variables, x)``) and of one jitted input gradient of the cross-entropy at labels
    `y`, the units every attack benchmark divides its time by."""
    import jax.numpy as jnp

    from hfcjax import attacks

    forward = jax.jit(lambda v, z: jnp.argmax(logits(v, z), -1))
    grad = jax.jit(lambda v, z, t: attacks.input_gradient(lambda q: logits(v, q), z, t))
    t_fwd = best_time(lambda: jax.block_until_ready(forward(variables, x)), reps=reps)
    t_grad = best_time(lambda: jax.block_until_ready(grad(variables, x, y)), reps=reps)
    return t_fwd, t_grad


def machine() -> str:
    device = jax.devices()[0]
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {device.platform} ({device.device_kind})"
    text += f"; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"
    try:
        import torch

        text += f"; torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f" ({torch.cuda.get_device_name()})"
    except ImportError:
        pass
    return text


def cifar_images(n: int) -> np.ndarray:
    """`n` real CIFAR-10 images (train then test split of $HFCJAX_DATA_DIR, repeated if needed)."""
    from hfcjax import data

    train, _ = data.load("cifar10", "train")
    test, _ = data.load("cifar10", "test")
    pool = np.concatenate([train, test])
    return np.resize(pool, (n, *pool.shape[1:]))


def on_gpu() -> bool:
    return jax.devices()[0].platform == "gpu"
