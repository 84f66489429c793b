"""The frequency evaluators of issue 24 against the model passes each one needs (goal <= 1.2):
four batches of real CIFAR-10 images through the MNIST CNN, the evaluator's whole run (after
a first run that compiles; its per-run set-up included) against the same number of plain
jitted passes over the four batches.

- filtering: 1 + 2 x radii + 2 x rings forward passes (each filtered image once);
- phase: 4 forward passes (clean, recombined, phase-only, amplitude-only);
- gradients: 1 forward+backward and 2 forward passes (clean, FGSM);
- features: 1 forward pass (the MNIST CNN, and ResNet-18 with BatchNorm);
- corruptions: 1 + 75 forward passes (clean and every corruption and severity), the images read from
  the cache; their one-off generation in numpy as a second row;
- margins (one batch): (bands + 1) x steps DeepFool linearisations, each a forward pass and `candidates`
  backward passes (vmapped); the loop stops early once every image crossed, so this is the
  most it may need.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_time, best_times, cifar_images, on_gpu
from hfcjax import evaluators, frequency, models
from hfcjax.evaluators import common, filtering, fused, variants

BATCHES = 4


def _timed_run(evaluator, inputs, *baselines, reps: int = 3):
    """[best time of the evaluator's whole run on `inputs`, after one run that compiles, then
    the best time of each blocking baseline], timed in turns (`best_times`)."""
    run = lambda: evaluator.run(inputs)
    if isinstance(evaluator, common.BatchEvaluator):  # the same compiled call every run
        run = functools.partial(fused.FusedPass([evaluator], progress=False).run, inputs)
    return best_times([run, *baselines], reps=reps)


def _setup(model_name: str, batch: int, **model_kwargs):
    """(apply_fn, variables, Inputs of BATCHES x batch real CIFAR images, first batch as floats,
    BATCHES jitted forward passes (blocking; compiled)) for a freshly initialised `model_name`."""
    model = models.create_model(model_name, 10, **model_kwargs)
    images = cifar_images(BATCHES * batch)
    labels = (np.arange(len(images)) % 10).astype(np.int32)
    x = jnp.asarray(images[:batch], jnp.float32) / 255
    variables = model.init(jax.random.key(0), x[:1])
    train_kw = {"train": False} if model_kwargs.get("batch_norm") else {}
    apply_fn = lambda v, z: model.apply(v, z, **train_kw)
    inputs = common.Inputs(variables, variants.model_variants(variables, rhos=(0.0,)), images, labels, (4.0, 8.0))
    forward = jax.jit(lambda v, z: jnp.argmax(apply_fn(v, z), -1))
    forwards = lambda: [jax.block_until_ready(forward(variables, x)) for _ in range(BATCHES)]
    forwards()
    return apply_fn, variables, inputs, x, forwards


def run():
    gpu = on_gpu()
    batch = 256 if gpu else 64
    apply_fn, variables, inputs, x, forwards = _setup("mnist_cnn", batch, batch_norm=False)
    images, labels = inputs.images, inputs.labels
    shared = common.Shared(batch_size=batch, log=lambda m: None)
    grad = jax.jit(jax.grad(lambda v, z: jnp.sum(jax.nn.log_softmax(apply_fn(v, z))[:, 0]), argnums=1))
    grads = lambda: [jax.block_until_ready(grad(variables, x)) for _ in range(BATCHES)]

    def section(name, **values):
        c = evaluators.section_defaults(name)
        c.update(enabled=True, **values)
        return evaluators.module(name).Evaluator(apply_fn, c, shared)

    rows = []
    fil = section("filtering")
    radii = fil.cfg.points
    rings = len(np.arange(0.0, filtering.largest_radius(32, 32), fil.cfg.ring_width))
    passes = 1 + 2 * radii + 2 * rings
    t, t_fwd = _timed_run(fil, inputs, forwards, reps=2)
    rows.append((f"filtering: {radii} radii + {rings} rings, {BATCHES} x {batch} images", len(inputs.images) / t, "img/s",
                 t / (passes * t_fwd), f"time / ({passes} forward passes) (goal <= 1.2)"))
    t, t_fwd = _timed_run(section("phase"), inputs, forwards)
    rows.append((f"phase: recombined, phase-only, amplitude-only, {BATCHES} x {batch} images", len(inputs.images) / t, "img/s",
                 t / (4 * t_fwd), "time / (4 forward passes) (goal <= 1.2)"))
    t, t_fwd, t_grad = _timed_run(section("gradients"), inputs, forwards, grads)
    rows.append((f"gradients: spectra of gradients and FGSM signs, {BATCHES} x {batch} images", len(inputs.images) / t, "img/s",
                 t / (t_grad + 2 * t_fwd), "time / (1 fwd+bwd + 2 forward passes) (goal <= 1.2)"))
    t, t_fwd = _timed_run(section("features"), inputs, forwards)
    rows.append((f"features: spectra of every feature map, {BATCHES} x {batch} images", len(images) / t, "img/s", t / t_fwd,
                 "time / (1 forward pass) (goal <= 1.2)"))
    rows.append(_features_resnet(gpu))
    rows.extend(_corruptions(section, inputs, forwards, batch))
    mar = section("margins", steps=5)
    starts = frequency.dct_bands(32, 32, mar.cfg.block, mar.cfg.stride)
    bands = len(starts) + 1
    cot = jax.nn.one_hot(jnp.arange(mar.cfg.candidates)[:, None] % 10, 10) * jnp.ones((1, batch, 1))

    def linearise(v, z):
        out, pull = jax.vjp(lambda q: apply_fn(v, q), z)
        return out, jax.vmap(lambda c: pull(c)[0])(cot)

    lin = jax.jit(linearise)
    t_lin = best_time(lambda: jax.block_until_ready(lin(variables, x)), reps=3)
    # One batch (slow), through the evaluator's compiled call: its run compiles that call once per
    # evaluation (every variant and batch), which on one batch would be a third of the time.
    margins_fn = mar.margins_fn(starts)
    u8 = jnp.asarray(images[:batch])
    t = best_time(lambda: jax.block_until_ready(margins_fn(variables, u8, jnp.asarray(labels[:batch]))), reps=1)
    most = bands * mar.cfg.steps
    rows.append((f"margins: {bands - 1} DCT bands + whole space, {mar.cfg.steps} DeepFool steps, "
                 f"{mar.cfg.candidates} candidates, {batch} images", batch / t, "img/s", t / (most * t_lin),
                 f"time / ({most} x (fwd + {mar.cfg.candidates} bwd)) (goal <= 1.2)"))
    return rows


def _corruptions(section, inputs, forwards, batch: int):
    """Two rows: the evaluator on cached corrupted images against its (sets + 1) forward passes,
    and the one-off generation of the 75 sets in numpy (the first run minus a cached run)."""
    import os
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as cache:
        saved, os.environ["HFCJAX_CACHE_DIR"] = os.environ.get("HFCJAX_CACHE_DIR"), cache
        try:
            ev = section("corruptions")
            start = time.perf_counter()
            ev.run(inputs)
            first = time.perf_counter() - start
            t, t_fwd = _timed_run(ev, inputs, forwards, reps=2)
        finally:
            os.environ.pop("HFCJAX_CACHE_DIR") if saved is None else os.environ.update(HFCJAX_CACHE_DIR=saved)
    sets = len(ev.cfg.corruptions) * len(ev.cfg.severities)
    n = len(inputs.images)
    return [(f"corruptions: {sets} sets read from the cache, {BATCHES} x {batch} images", n * (sets + 1) / t,
             "img/s", t / ((sets + 1) * t_fwd), f"time / ({sets + 1} forward passes) (goal <= 1.2)"),
            (f"corruptions: generating the {sets} sets (numpy, once; cached)", n * sets / (first - t), "img/s",
             (first - t) / ((sets + 1) * t_fwd), f"time / ({sets + 1} forward passes) (no goal: data preparation)")]


def _features_resnet(gpu: bool):
    """The `features` row on ResNet-18 (BatchNorm, CIFAR-10 images): its every module output."""
    batch = 128 if gpu else 32
    apply_fn, variables, inputs, _, forwards = _setup("resnet18", batch, batch_norm=True)
    c = evaluators.section_defaults("features")
    c.enabled = True
    evaluator = evaluators.module("features").Evaluator(apply_fn, c, common.Shared(batch_size=batch, log=lambda m: None))
    t, t_fwd = _timed_run(evaluator, inputs, forwards)
    return (f"features: ResNet-18, every module's output, {BATCHES} x {batch} images", len(inputs.images) / t, "img/s",
            t / t_fwd, "time / (1 forward pass) (goal <= 1.2)")
