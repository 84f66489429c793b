"""Training loop: one TrainState, a jitted data-parallel train step, one compiled
evaluation of the original/LFC/HFC accuracies per epoch, orbax checkpoints, metrics.

Everything a run does is a function of (config, seed): the batch order of epoch e is
`data.epoch_order(n, seed, e)`, step randomness is `fold_in(rng, step)`. A run resumes
from its latest epoch checkpoint and then equals an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from hfcjax import attacks, config as config_lib, data, frequency, measure, models, plots, sharding

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to do."""


class TrainState(struct.PyTreeNode):
    """Everything that changes during training."""

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jnp.ndarray  # raw uint32 key; step randomness is fold_in(rng, step)


# --------------------------------------------------------------------------- building blocks


def _positive_int(config, key):
    value = config[key]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")


def _one_of(config, key, allowed) -> None:
    if config[key] not in allowed:
        raise ValueError(f"config.{key} {config[key]!r} is unknown; choose one of {tuple(sorted(allowed))}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key and what is allowed."""
    data.get_spec(config.dataset)
    for key, allowed in (("data_source", data.SOURCES), ("model", models.MODELS),
                         ("optimizer", config_lib.OPTIMIZERS), ("train_component", config_lib.COMPONENTS),
                         ("train_rescale", frequency.RESCALE_MODES), ("compute_dtype", config_lib.DTYPES)):
        _one_of(config, key, allowed)
    for key in ("batch_size", "num_epochs", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        _positive_int(config, key)
    for key in ("train_subset", "test_subset", "eval_train_subset"):
        if not isinstance(config[key], int) or config[key] < 0:
            raise ValueError(f"config.{key} must be an integer >= 0 (0 = all), got {config[key]!r}.")
    if not config.learning_rate > 0:
        raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate!r}.")
    if not 0.0 <= config.dropout_rate < 1.0:
        raise ValueError(f"config.dropout_rate must be in [0, 1), got {config.dropout_rate!r}.")
    if config.mixup_alpha < 0:
        raise ValueError(f"config.mixup_alpha must be >= 0 (0 = off), got {config.mixup_alpha!r}.")
    radii = [config.train_radius, *config.track_radii]
    if any(not r >= 0 for r in radii):
        raise ValueError(f"radii must be >= 0: train_radius={config.train_radius}, track_radii={config.track_radii}.")
    adv = config.adversarial
    if adv.enabled and not (0 <= adv.eps <= 1 and adv.step_size > 0 and adv.steps > 0):
        raise ValueError("config.adversarial needs 0 <= eps <= 1, step_size > 0 and steps > 0.")


def make_optimizer(config) -> optax.GradientTransformation:
    lr = config.learning_rate
    return {
        "sgd": lambda: optax.sgd(lr, momentum=config.momentum or None),
        "adam": lambda: optax.adam(lr),
        "adagrad": lambda: optax.adagrad(lr),
        "adadelta": lambda: optax.adadelta(lr),
        "rmsprop": lambda: optax.rmsprop(lr),
    }[config.optimizer]()


def variables_of(params, batch_stats) -> Dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def init_state(model, tx, image_shape, seed: int) -> TrainState:
    rng = jax.random.PRNGKey(seed)
    init_key, state_key = jax.random.split(rng)
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=state_key)


def training_inputs(config, x):
    """The images the model trains on: x, or its rescaled LFC/HFC (Table 1)."""
    if config.train_component == "original":
        return x
    low, high = frequency.split(x, config.train_radius, inclusive=config.inclusive)
    return frequency.rescale(low if config.train_component == "low" else high, config.train_rescale)


def make_train_step(config, model, tx, num_classes: int):
    """(state, acc, images_u8, labels) -> (state, acc); acc sums loss/accuracy on device."""

    def step(state: TrainState, acc, images_u8, labels):
        key = jax.random.fold_in(state.rng, state.step)
        mix_key, perm_key, dropout_key, adv_key = jax.random.split(key, 4)
        x = training_inputs(config, measure.to_unit(images_u8))
        if config.adversarial.enabled:
            variables = variables_of(state.params, state.batch_stats)
            logits_fn = lambda z: model.apply(variables, z, train=False)
            adv = config.adversarial
            x = attacks.pgd(logits_fn, x, labels, adv.eps, step_size=adv.step_size, steps=adv.steps,
                            random_start=adv.random_start, key=adv_key)
            x = jax.lax.stop_gradient(x)
        targets = jax.nn.one_hot(labels, num_classes)
        if config.mixup_alpha > 0:
            lam = jax.random.beta(mix_key, config.mixup_alpha, config.mixup_alpha)
            perm = jax.random.permutation(perm_key, x.shape[0])
            x = lam * x + (1 - lam) * x[perm]
            targets = lam * targets + (1 - lam) * targets[perm]

        def loss_fn(params):
            variables = variables_of(params, state.batch_stats)
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": dropout_key})
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
            batch_stats=updates.get("batch_stats", state.batch_stats), opt_state=opt_state)
        n = labels.shape[0]
        acc = {
            "loss": acc["loss"] + loss * n,
            "correct": acc["correct"] + jnp.sum(jnp.argmax(logits, -1) == labels),
            "count": acc["count"] + n,
            "bad_step": jnp.where(jnp.isfinite(loss), acc["bad_step"], jnp.minimum(acc["bad_step"], state.step)),
        }
        return new_state, acc

    return step


def zero_accumulator():
    return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32), "bad_step": jnp.full((), np.iinfo(np.int32).max, jnp.int32)}


def make_eval_step(model, inclusive: bool):
    """(variables, images_u8, labels, mask, radii) -> correct counts of the original images
    and of their LFC and HFC at every radius, in one compiled pass."""

    def step(variables, images_u8, labels, mask, radii):
        logits_fn = lambda v: model.apply(variables, v, train=False)
        return measure.variant_counts(logits_fn, images_u8, labels, mask, radii, inclusive=inclusive)

    return step


# --------------------------------------------------------------------------- the run


class Trainer:
    """Holds the compiled steps, the data and the checkpoint manager of one run."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate_config(config)
        self.config, self.workdir = config, Path(workdir)
        self.mesh = sharding.make_mesh()
        sharding.check_batch_size(config.batch_size, self.mesh)
        sharding.check_batch_size(config.eval_batch_size, self.mesh, "eval_batch_size")
        self.repl, self.batch_sh = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
        self._load_data()
        self.model = models.from_config(config, self.spec.num_classes)
        self.tx = make_optimizer(config)
        init = functools.partial(init_state, self.model, self.tx, self.spec.shape, config.seed)
        self.state_sharding = jax.tree.map(lambda _: self.repl, jax.eval_shape(init))
        self.init = jax.jit(init, out_shardings=self.state_sharding)
        acc_sharding = jax.tree.map(lambda _: self.repl, zero_accumulator())
        self.train_step = jax.jit(
            make_train_step(config, self.model, self.tx, self.spec.num_classes),
            in_shardings=(self.state_sharding, acc_sharding, self.batch_sh, self.batch_sh),
            out_shardings=(self.state_sharding, acc_sharding), donate_argnums=(0, 1))
        self.eval_step = jax.jit(make_eval_step(self.model, config.inclusive),
                                 in_shardings=(self.repl, self.batch_sh, self.batch_sh, self.batch_sh, self.repl),
                                 out_shardings=self.repl)
        self.radii = jnp.asarray(np.asarray(config.track_radii, np.float32))
        self.steps_per_epoch = data.steps_per_epoch(len(self.train_images), config.batch_size, True)
        if self.steps_per_epoch == 0:
            raise ValueError(f"config.batch_size={config.batch_size} is larger than the training set "
                             f"({len(self.train_images)} images).")

    def _load_data(self):
        c = self.config
        self.spec = data.get_spec(c.dataset)
        kw = dict(source=c.data_source, data_dir=c.data_dir or None)
        self.train_images, self.train_labels = data.subset(*data.load(c.dataset, "train", **kw), c.train_subset)
        self.test_images, self.test_labels = data.subset(*data.load(c.dataset, "test", **kw), c.test_subset)
        if c.shuffle_labels:
            perm = np.random.default_rng([c.seed, 12345]).permutation(len(self.train_labels))
            self.train_labels = self.train_labels[perm]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state: TrainState, images, labels) -> Dict[str, float]:
        variables = variables_of(state.params, state.batch_stats)
        total = None
        for batch, lab, mask in data.batches(images, labels, self.config.eval_batch_size, shuffle=False,
                                             drop_remainder=False):
            x, y, m = sharding.global_batch(self.batch_sh, batch, lab, mask)
            counts = self.eval_step(variables, x, y, m, self.radii)
            total = counts if total is None else total + counts
        total = np.asarray(jax.device_get(total), np.float64) / len(images)
        return dict(zip(measure.variant_names(self.config.track_radii), total.tolist()))

    def epoch_metrics(self, state) -> Dict[str, float]:
        eval_train = data.subset(self.train_images, self.train_labels, self.config.eval_train_subset)
        out = {}
        for split, (images, labels) in (("train", eval_train), ("test", (self.test_images, self.test_labels))):
            for name, value in self.evaluate(state, images, labels).items():
                out[f"{split}_acc" if name == "orig" else f"{split}_{name}"] = value
        return out

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_manager(self) -> ocp.CheckpointManager:
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=self.config.keep_checkpoints),
            pp.BestN(get_metric_fn=lambda m: m["test_acc"], n=1),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
        return ocp.CheckpointManager((self.workdir / CHECKPOINT_DIR).absolute(), options=options,
                                     item_names=("model", "train", "config", "history"))

    def save(self, manager, epoch, state, history):
        manager.save(epoch, metrics={"test_acc": history[-1]["test_acc"]}, args=ocp.args.Composite(
            model=ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state, "rng": state.rng}),
            config=ocp.args.JsonSave(self.config.to_dict()),
            history=ocp.args.JsonSave(history)))

    def restore(self, manager, epoch, abstract: TrainState):
        restored = manager.restore(epoch, args=ocp.args.Composite(
            model=ocp.args.StandardRestore({"params": abstract.params, "batch_stats": abstract.batch_stats}),
            train=ocp.args.StandardRestore({"step": abstract.step, "opt_state": abstract.opt_state,
                                            "rng": abstract.rng}),
            history=ocp.args.JsonRestore()))
        m, t = restored["model"], restored["train"]
        state = TrainState(step=t["step"], params=m["params"], batch_stats=m["batch_stats"],
                           opt_state=t["opt_state"], rng=t["rng"])
        return state, list(restored["history"])

    # ------------------------------------------------------------------ loop
    def run(self) -> list:
        c, workdir = self.config, self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        is_main = jax.process_index() == 0
        manager = self.checkpoint_manager()
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                jax.eval_shape(self.init), self.state_sharding)
        start_epoch, history = 0, []
        if manager.latest_step() is not None:
            start_epoch = manager.latest_step()
            state, history = self.restore(manager, start_epoch, abstract)
            log(f"resuming from {workdir / CHECKPOINT_DIR} after epoch {start_epoch}")
        else:
            state = self.init()
        if is_main:
            write_metrics(workdir / METRICS_FILE, history)
            if c.dataset == "cifar10" or c.dataset.endswith("mnist"):
                plots.split_examples(self.test_images[:4], c.track_radii, workdir / "figures" / "split_examples.png")
        writer = event_writer(workdir) if is_main else None
        n_train = self.steps_per_epoch * c.batch_size
        run_start = time.time()
        log(f"{c.model} on {c.dataset}: {len(self.train_images)} train / {len(self.test_images)} test images, "
            f"{self.steps_per_epoch} steps/epoch, {c.num_epochs} epochs, {self.mesh.size} device(s) "
            f"[{jax.devices()[0].platform}]")
        for epoch in range(start_epoch + 1, c.num_epochs + 1):
            epoch_start = time.time()
            acc = jax.device_put(zero_accumulator(), self.repl)
            for i, (images, labels, _) in enumerate(data.batches(self.train_images, self.train_labels, c.batch_size,
                                                                 seed=c.seed, epoch=epoch)):
                x, y = sharding.global_batch(self.batch_sh, images, labels)
                state, acc = self.train_step(state, acc, x, y)
                if (i + 1) % c.log_every_steps == 0 or i + 1 == self.steps_per_epoch:
                    summary = check_finite(jax.device_get(acc), epoch)
                    rate = (i + 1) * c.batch_size / (time.time() - epoch_start)
                    remaining = ((c.num_epochs - epoch) * n_train + (self.steps_per_epoch - i - 1) * c.batch_size)
                    log(f"epoch {epoch}/{c.num_epochs} step {i + 1}/{self.steps_per_epoch} "
                        f"loss {summary['loss']:.4f} acc {summary['acc']:.4f} | {rate:,.0f} img/s | "
                        f"ETA {format_seconds(remaining / max(rate, 1e-9))} (training only)")
            train_time = time.time() - epoch_start
            summary = check_finite(jax.device_get(acc), epoch)
            eval_start = time.time()
            record = {"epoch": epoch, "step": int(jax.device_get(state.step)), "loss": summary["loss"],
                      "batch_acc": summary["acc"], **self.epoch_metrics(state),
                      "train_seconds": round(train_time, 3), "eval_seconds": round(time.time() - eval_start, 3),
                      "images_per_second": round(n_train / train_time, 1)}
            history.append(record)
            self.save(manager, epoch, state, history)
            if is_main:
                append_metrics(workdir / METRICS_FILE, record)
                write_events(writer, record)
            log(f"epoch {epoch}: train acc {record['train_acc']:.4f} test acc {record['test_acc']:.4f} "
                f"({record['train_seconds']:.1f}s train, {record['eval_seconds']:.1f}s eval of "
                f"{1 + 2 * len(c.track_radii)} variants)")
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
        if is_main and history:
            path = plots.training_curves(history, workdir / "figures" / "curves.png",
                                         title=f"{c.model} on {c.dataset}")
            log(f"done in {format_seconds(time.time() - run_start)}: metrics {workdir / METRICS_FILE}, "
                f"figures {Path(path).parent}, checkpoints {workdir / CHECKPOINT_DIR}")
        return history


def check_finite(acc, epoch) -> Dict[str, float]:
    """Host-side summary of the accumulator; stops the run at the first non-finite loss."""
    if int(acc["bad_step"]) != np.iinfo(np.int32).max:
        raise TrainingError(
            f"the loss became NaN or inf at step {int(acc['bad_step'])} (epoch {epoch}); the run stopped and no "
            "checkpoint of this state was written. Lower config.learning_rate or check the inputs, then rerun: "
            "training resumes from the last good epoch.")
    count = max(int(acc["count"]), 1)
    return {"loss": float(acc["loss"]) / count, "acc": float(acc["correct"]) / count}


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def write_metrics(path: Path, records) -> None:
    """Rewrites metrics.jsonl atomically from the checkpointed history (drops epochs not checkpointed)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def append_metrics(path: Path, record) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def event_writer(workdir: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "events"))


def write_events(writer, record) -> None:
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float)):
            writer.add_scalar(key, value, record["epoch"])
    writer.flush()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list:
    """Trains (or resumes) the run in `workdir`; returns the per-epoch metric records."""
    return Trainer(config, workdir).run()
