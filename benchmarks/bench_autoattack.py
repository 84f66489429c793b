"""AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5,000) in hfcjax against torchattacks'
AutoAttack on the same WideResNet and images (issue 26, goal >= 3x on the GPU). Speed only:
random weights (torch's init, converted with hfcjax.torch_weights), labels = the model's own
clean predictions so every attack starts on every image. The CPU run uses a WRN-10-1 on 16
images (a smoke test of the same code path); the GPU run a WRN-28-10 on 500 images, bf16 off."""

from __future__ import annotations

import time

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
