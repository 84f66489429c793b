"""AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5,000) in hfcjax against torchattacks'
AutoAttack on the same WideResNet and images (issue 26, goal >= 3x on the GPU). Speed only:
random weights (torch's init, converted with hfcjax.torch_weights), labels = the model's own
clean predictions so every attack starts on every image. The CPU run uses a WRN-10-1 on 16
images (a smoke test of the same code path); the GPU run a WRN-28-10 on 500 images, bf16 off."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from benchmarks.common import cifar_images, on_gpu
from hfcjax import evaluators, torch_weights
from hfcjax.evaluators import common, variants


def run():
    import torch
    import torchattacks

    from benchmarks.torch_resnet import WideResNet

    gpu = on_gpu()
    depth, widen, n = (28, 10, 500) if gpu else (10, 1, 16)
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = WideResNet(depth, widen).eval()
    images = cifar_images(n)
    x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        labels = model(x).argmax(1).numpy().astype(np.int32)
    module, variables = torch_weights.convert(model.state_dict(), "wrn")
    apply_fn = lambda v, z: module.apply(v, z)
    cfg = evaluators.section_defaults("autoattack")
    cfg.update(enabled=True, eps=8 / 255)
    inputs = common.Inputs(variables, variants.model_variants(variables, rhos=(0.0,), layers=(".*",)), images,
                           labels, (8.0,))
    evaluator = evaluators.module("autoattack").Evaluator(apply_fn, cfg, common.Shared(batch_size=n, log=lambda m: None))
    start = time.perf_counter()
    (row,) = evaluator.run(inputs)  # compiles every attack
    first = time.perf_counter() - start
    start = time.perf_counter()
    (row,) = evaluator.run(inputs)
    ours = time.perf_counter() - start

    model = model.to(device)
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=8 / 255, version="standard", n_classes=10, seed=0)
    xt, yt = x.to(device), torch.from_numpy(labels.astype(np.int64)).to(device)
    start = time.perf_counter()
    adv = attack(xt, yt)
    if device == "cuda":
        torch.cuda.synchronize()
    theirs = time.perf_counter() - start
    with torch.no_grad():
        robust_theirs = float((model(adv).argmax(1) == yt).float().mean())
    name = f"AutoAttack standard, WRN-{depth}-{widen}, {n} images"
    return [(f"{name}: hfcjax (robust {row.robust:.3f}; first run with compilation {first:.1f} s)", n / ours,
             "img/s", theirs / ours, f"torchattacks time / hfcjax time (robust {robust_theirs:.3f}; goal >= 3 on "
             "the GPU)")]


def attack_rows(steps: Optional[int] = None):
    """Issue 23's per-attack goal: each attack of the cascade <= 1.2x the passes it performs,
    9 targets as AutoAttack's, `steps` per target (AutoAttack's 100 on a GPU; 10 on a CPU, where
    900 passes of even the MNIST CNN take 90 s per run). Random weights: the MNIST CNN on 64
    CIFAR-10 images on a CPU, ResNet-18 in bfloat16 on 128 on a GPU; labels = the model's own
    clean predictions and an eps of 1e-4, so no image is broken and every target runs. APGD-T:
    9 x `steps` forward+backward passes (plus one forward to rank the targets); FAB-T, as
    AutoAttack's, also one forward per step (is the new point adversarial?);
    Square: 1,000 queries + 1 forward passes."""
    import jax
    import jax.numpy as jnp

    from benchmarks.common import best_time, pass_times, random_model
    from hfcjax import attacks

    gpu = on_gpu()
    batch, queries = (128, 1000) if gpu else (64, 1000)
    steps = steps or (100 if gpu else 10)
    arch = "resnet18" if gpu else "mnist_cnn"
    logits, variables, x = random_model(arch, batch, batch_norm=gpu, dtype="bfloat16" if gpu else "float32")
    y = jnp.argmax(logits(variables, x), -1)
    eps, targets = 1e-4, 9
    t_fwd, t_grad = pass_times(logits, variables, x, y)
    runs = {
        f"APGD-T, {targets} targets x {steps} steps": (
            lambda v, z, t: attacks.apgd_targeted(lambda q: logits(v, q), z, t, eps, targets=targets, steps=steps).adv,
            targets * steps * t_grad + t_fwd, f"{targets * steps} x fwd+bwd + 1 fwd"),
        f"FAB-T, {targets} targets x {steps} steps": (
            lambda v, z, t: attacks.fab_targeted(lambda q: logits(v, q), z, t, eps, targets=targets, steps=steps).adv,
            targets * steps * (t_grad + t_fwd) + t_fwd, f"{targets * steps} x (fwd+bwd + fwd) + 1 fwd"),
        f"Square, {queries} queries": (
            lambda v, z, t: attacks.square(lambda q: logits(v, q), z, t, eps, key=jax.random.key(0), queries=queries,
                                           p_init=0.8, rescale_schedule=False),
            (queries + 1) * t_fwd, f"{queries + 1} forward passes"),
    }
    rows = []
    for name, (attack, passes, of) in runs.items():
        run = jax.jit(attack)
        t = best_time(lambda: jax.block_until_ready(run(variables, x, y)), reps=2)
        rows.append((f"{name}, {arch} batch {batch}", batch / t, "img/s", t / passes,
                     f"time / ({of}) (goal <= 1.2)"))
        print(f"  {rows[-1][0]}: {t:.2f} s, {rows[-1][3]:.2f} x its passes", flush=True)
    return rows
