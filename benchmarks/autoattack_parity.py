"""hfcjax's AutoAttack and Square against torchattacks' on one small trained model.

    python -m benchmarks.autoattack_parity square [--queries 1000] [--images 100]
    python -m benchmarks.autoattack_parity standard [--images 100]
    python -m benchmarks.autoattack_parity rand [--images 100] [--sigma 0.1]

The model is the AutoAttack parity test's: a 784-64-10 MLP trained in torch for two epochs on
6,000 Fashion-MNIST images (seed 0), the first `--images` test images. `square`: robust accuracy
after Square alone per norm, eps and seed, with AutoAttack's settings (p_init 0.8, schedule not
rescaled). `standard`: AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square 5,000) in
L-inf and L2, hfcjax's `autoattack` evaluator against `torchattacks.AutoAttack`, with each one's
seconds. `rand`: the MLP made random (Gaussian noise of std `--sigma` on its input at every
pass), AutoAttack's rand version (APGD-CE, APGD-DLR, EOT over 20 draws) in both, and hfcjax's
with one draw per gradient beside it. Prints Markdown tables (docs/results.md, section 5). Needs torch and torchattacks (the
test extras).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import attacks, data

CASES = (("linf", 0.04), ("linf", 0.08), ("l2", 0.5), ("l2", 1.0), ("l2", 1.5))
SEEDS = (0, 1)


def trained_mlp(images: int):
    import torch

    torch.manual_seed(0)
    x, y = data.load("fashion_mnist", "train")
    x = torch.from_numpy(x[:6000].astype(np.float32) / 255).permute(0, 3, 1, 2)
    y = torch.from_numpy(y[:6000].astype(np.int64))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(2):
        for i in range(0, 6000, 100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
            opt.step()
    model.eval()
    test_x, test_y = data.load("fashion_mnist", "test")
    return model, test_x[:images], test_y[:images].astype(np.int32)


def jax_logits(model):
    """The torch MLP's logits in jax: fn(images NHWC in [0, 1])."""
    w1, b1, w2, b2 = (jnp.asarray(p.detach().numpy()) for p in model.parameters())
    return lambda z: jnp.maximum(z.reshape(z.shape[0], -1) @ w1.T + b1, 0) @ w2.T + b2


def square_table(model, images, labels, queries: int) -> None:
    import torch
    import torchattacks

    fn = jax_logits(model)
    x_jax, y_jax = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
    x_torch = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        clean = float((model(x_torch).argmax(1).numpy() == labels).mean())
    print(f"| norm, eps | clean | hfcjax (keys {SEEDS}) | torchattacks (seeds {SEEDS}) | seconds hfcjax / torchattacks |")
    print("|---|---|---|---|---|")
    for norm, eps in CASES:
        run = jax.jit(lambda x, y, k, norm=norm, eps=eps: attacks.square(
            fn, x, y, eps, key=k, queries=queries, norm=norm, p_init=0.8, rescale_schedule=False))
        ours, theirs, times = [], [], [0.0, 0.0]
        for seed in SEEDS:
            start = time.time()
            adv = run(x_jax, y_jax, jax.random.key(seed))
            ours.append(float((np.asarray(fn(adv)).argmax(-1) == labels).mean()))
            times[0] += time.time() - start
            start = time.time()
            attack = torchattacks.Square(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                         n_queries=queries, p_init=0.8, resc_schedule=False, seed=seed)
            adv_t = attack(x_torch, torch.from_numpy(labels.astype(np.int64)))
            with torch.no_grad():
                theirs.append(float((model(adv_t).argmax(1).numpy() == labels).mean()))
            times[1] += time.time() - start
        fmt = lambda v: " / ".join(f"{a:.2f}" for a in v)
        print(f"| {norm} {eps:g} | {clean:.2f} | {fmt(ours)} | {fmt(theirs)} | {times[0]:.1f} / {times[1]:.1f} |")


def standard_table(model, images, labels) -> None:
    import torch
    import torchattacks

    from hfcjax import evaluators
    from hfcjax.evaluators import common, variants

    logits = jax_logits(model)
    fn = lambda variables, z: logits(z)
    x_torch = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    print("| norm, eps | clean | hfcjax robust (after each attack) | torchattacks robust | seconds hfcjax / torchattacks |")
    print("|---|---|---|---|---|")
    for norm, eps in (("linf", 0.04), ("l2", 1.0)):
        start = time.time()
        adv = torchattacks.AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                                      n_classes=10, seed=0)(x_torch, torch.from_numpy(labels.astype(np.int64)))
        with torch.no_grad():
            theirs = float((model(adv).argmax(1).numpy() == labels).mean())
        seconds_theirs = time.time() - start
        cfg = evaluators.section_defaults("autoattack")
        cfg.update(enabled=True, norm=norm, eps=eps)
        inputs = common.Inputs({}, variants.model_variants({}, rhos=(0.0,)), images, labels, (4.0,))
        start = time.time()
        (row,) = evaluators.module("autoattack").Evaluator(
            fn, cfg, common.Shared(batch_size=len(images), log=lambda m: None)).run(inputs)
        steps = ", ".join(f"{s['attack']} {s['robust_accuracy']:.2f}" for s in row.per_attack)
        print(f"| {norm} {eps:g} | {row.clean:.2f} | {row.robust:.2f} ({steps}) | {theirs:.2f} | "
              f"{time.time() - start:.1f} / {seconds_theirs:.1f} |")


def rand_table(model, images, labels, sigma: float) -> None:
    import torch
    import torchattacks

    from hfcjax import evaluators
    from hfcjax.evaluators import common, variants

    class Noisy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x + sigma * torch.randn_like(x))

    noisy, logits = Noisy(model).eval(), jax_logits(model)
    apply_fn = attacks.RandomizedApply(lambda v, z, key: logits(z + sigma * jax.random.normal(key, z.shape)))
    x_torch = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    print(f"| eps | hfcjax rand: clean, after APGD-CE, APGD-DLR | hfcjax, one draw per gradient | torchattacks rand "
          f"| seconds hfcjax / torchattacks |")
    print("|---|---|---|---|---|")
    for eps in (0.04, 0.08):
        torch.manual_seed(0)
        start = time.time()
        adv = torchattacks.AutoAttack(noisy, norm="Linf", eps=eps, version="rand", n_classes=10, seed=0)(
            x_torch, torch.from_numpy(labels.astype(np.int64)))
        with torch.no_grad():
            theirs = float((noisy(adv).argmax(1).numpy() == labels).mean())
        seconds_theirs = time.time() - start
        rows = {}
        for draws in (20, 1):
            cfg = evaluators.section_defaults("autoattack")
            cfg.update(enabled=True, eps=eps, version="rand", eot_draws=draws)
            inputs = common.Inputs({}, variants.model_variants({}, rhos=(0.0,)), images, labels, (4.0,))
            start = time.time()
            (rows[draws],) = evaluators.module("autoattack").Evaluator(
                apply_fn, cfg, common.Shared(batch_size=len(images), log=lambda m: None)).run(inputs)
            if draws == 20:
                seconds = time.time() - start
        steps = ", ".join(f"{s['robust_accuracy']:.2f}" for s in rows[20].per_attack)
        print(f"| {eps:g} | {rows[20].clean:.2f}, {steps} | {rows[1].robust:.2f} | {theirs:.2f} | "
              f"{seconds:.1f} / {seconds_theirs:.1f} |")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("square", "standard", "rand"))
    parser.add_argument("--queries", type=int, default=1000, help="square: queries per run")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.1, help="rand: std of the input noise of each pass")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, images, labels = trained_mlp(args.images)
    if args.what == "square":
        square_table(model, images, labels, args.queries)
    elif args.what == "rand":
        rand_table(model, images, labels, args.sigma)
    else:
        standard_table(model, images, labels)


if __name__ == "__main__":
    main()
