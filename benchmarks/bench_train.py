"""ResNet-18 CIFAR train step (Adam): hfcjax's jitted step and real loop vs PyTorch."""

from __future__ import annotations

import os

import jax

from benchmarks.common import best_time, on_gpu
from hfcjax import config as config_lib, data, sharding, steps as steps_lib, train


def bench_config(batch_size, dtype, steps):
    c = config_lib.default()
    c.batch_norm, c.compute_dtype, c.batch_size = True, dtype, batch_size
    c.train_subset = batch_size * steps  # one "epoch" = the timed steps
    c.test_subset = 100
    return c


def step_inputs(batch_size, dtype, steps, workdir):
    """A real Trainer, its initial state and metric accumulator, and one real CIFAR batch on device."""
    trainer = train.Trainer(bench_config(batch_size, dtype, steps), workdir)
    state = trainer.init()
    totals = jax.device_put(steps_lib.zero_totals(), trainer.repl)
    images, labels, _ = next(data.batches(trainer.train_images, trainer.train_labels, batch_size, epoch=0))
    x, y = sharding.global_batch(trainer.batch_sh, images, labels)
    return trainer, state, totals, x, y


def flax_rates(batch_size, dtype, steps, workdir):
    """(bare jitted step img/s, real loop img/s): the loop feeds real CIFAR batches from the host."""
    trainer, state, totals, x, y = step_inputs(batch_size, dtype, steps, workdir)
    holder = {"state": state, "totals": totals}

    def bare():
        for _ in range(steps):
            holder["state"], holder["totals"] = trainer.train_step(holder["state"], holder["totals"], x, y)
        jax.block_until_ready(holder["totals"])

    def loop():
        for images, labels, _ in data.batches(trainer.train_images, trainer.train_labels, batch_size, epoch=1):
            xs, ys = sharding.global_batch(trainer.batch_sh, images, labels)
            holder["state"], holder["totals"] = trainer.train_step(holder["state"], holder["totals"], xs, ys)
        jax.block_until_ready(holder["totals"])

    t_bare = best_time(bare, reps=3)
    t_loop = best_time(loop, reps=3)
    return steps * batch_size / t_bare, steps * batch_size / t_loop


def torch_rate(batch_size, dtype, steps, compile_model=False):
    import torch

    from benchmarks.torch_resnet import ResNet18, device

    torch.set_num_threads(os.cpu_count())
    dev = device()
    model = ResNet18().to(dev)
    if dev == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch_size, 3, 32, 32, device=dev)
    if dev == "cuda":
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model_fn):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=(dtype == "bfloat16")):
            loss = loss_fn(model_fn(x), y)
        loss.backward()
        opt.step()

    fn = torch.compile(model) if compile_model else model

    def run():
        for _ in range(steps):
            step(fn)
        if dev == "cuda":
            torch.cuda.synchronize()

    return steps * batch_size / best_time(run, reps=3)


def run(workdir):
    rows = []
    # Steps are limited by the CIFAR-10 subset (5,085 images): the real loop feeds real images.
    settings = ([(128, "float32", 20), (512, "bfloat16", 9)] if on_gpu() else [(100, "float32", 3), (256, "float32", 2)])
    if os.environ.get("BENCH_TRAIN_DTYPE"):  # e.g. bfloat16: only that setting (the GPU script's budget)
        settings = [s for s in settings if s[1] == os.environ["BENCH_TRAIN_DTYPE"]]
    for batch_size, dtype, steps in settings:
        bare, loop = flax_rates(batch_size, dtype, steps, os.path.join(workdir, f"train{batch_size}"))
        eager = torch_rate(batch_size, dtype, steps)
        label = f"ResNet-18 train step, batch {batch_size}, {dtype}"
        rows.append((f"{label}: PyTorch eager", eager, "img/s", 1.0, "baseline"))
        if on_gpu() and dtype == "bfloat16" and os.environ.get("BENCH_TORCH_COMPILE", "1") == "1":
            compiled = torch_rate(batch_size, dtype, steps, compile_model=True)
            rows.append((f"{label}: torch.compile", compiled, "img/s", compiled / eager, "speed-up vs eager"))
        goal = "(goal >= 1.3x torch.compile)" if on_gpu() else "(goal >= 1.0)"
        rows.append((f"{label}: hfcjax bare jitted step", bare, "img/s", bare / eager, f"speed-up vs eager {goal}"))
        rows.append((f"{label}: hfcjax real loop (host feeding)", loop, "img/s", loop / bare,
                     "fraction of the bare step (goal >= 0.9)"))
    return rows
