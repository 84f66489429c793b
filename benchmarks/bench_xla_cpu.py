"""XLA:CPU's convolutions with hfcjax's flag (`backend.cpu_convolutions_threaded`) against
jaxlib's default, each in its own process (an XLA flag holds for a whole process): a lone
convolution whose result goes to memory, and a model's forward pass, input gradient,
parameter gradient (a training step's work) and PGD-20, for the MNIST CNN (64 real CIFAR-10
images) and ResNet-18 with BatchNorm (16). Ratio: time with the flag / time without (below 1:
the flag is faster). CPU only.

    python -m benchmarks --only xla_cpu
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MODELS = (("mnist_cnn", 64, {}), ("resnet18", 16, {"batch_norm": True}))


def _child() -> dict:
    """Times (seconds) of every workload in this process, as its XLA_FLAGS have it."""
    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks.common import best_time, pass_times, random_model
    from hfcjax import attacks

    x = jax.random.uniform(jax.random.key(0), (64, 32, 32, 3))
    w = jax.random.normal(jax.random.key(1), (5, 5, 3, 32))
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    times = {"a lone 5x5 convolution, 3 -> 32 channels, 64 x 32 x 32": best_time(
        lambda: jax.block_until_ready(conv(x, w)), reps=7)}
    for arch, batch, options in MODELS:
        logits, variables, images = random_model(arch, batch, **options)
        labels = jnp.arange(batch) % 10
        t_fwd, t_grad = pass_times(logits, variables, images, labels)
        loss = lambda v, z: optax.softmax_cross_entropy_with_integer_labels(logits(v, z), labels).mean()
        param_grad = jax.jit(jax.grad(loss))
        pgd = jax.jit(lambda v, z: attacks.pgd(lambda q: logits(v, q), z, labels, 8 / 255, step_size=2 / 255, steps=20))
        name = f"{arch}, {batch} images"
        times[f"{name}: forward pass"] = t_fwd
        times[f"{name}: input gradient"] = t_grad
        times[f"{name}: parameter gradient"] = best_time(lambda: jax.block_until_ready(param_grad(variables, images)))
        times[f"{name}: PGD-20"] = best_time(lambda: jax.block_until_ready(pgd(variables, images)), reps=2)
    return times


def _times(tuned: bool) -> dict:
    from hfcjax import backend

    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(backend.YNN_FLAG))
    env["HFCJAX_XLA_CPU_TUNING"] = "1" if tuned else "0"
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_xla_cpu"], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run():
    from benchmarks.common import on_gpu

    if on_gpu():
        return []
    default, tuned = _times(False), _times(True)
    return [(f"XLA:CPU convolutions: {name}", tuned[name] * 1e3, "ms", tuned[name] / default[name],
             "time with hfcjax's flag / jaxlib's default (backend.cpu_convolutions_threaded)") for name in tuned]


if __name__ == "__main__":
    import hfcjax  # noqa: F401  (applies the flag unless HFCJAX_XLA_CPU_TUNING=0)

    print(json.dumps(_child()))
