"""Training's step functions, in the shape of flax's examples: module-level functions of a
`TrainState` that take a small frozen `StepOptions` (static under jit), the optimizer from the
config, the per-epoch totals kept on device and their host-side summary.

Step randomness is `fold_in(rng, step)`, so a step's numbers depend only on (config, seed, step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from hfcjax import attacks, checkpoints, frequency, measure
from hfcjax.errors import UserError

NO_BAD_STEP = np.iinfo(np.int32).max
BATCH_ACCURACY = "batch_acc"  # metrics.jsonl: accuracy on the (augmented) batches trained on, over the epoch


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to do."""


class TrainState(struct.PyTreeNode):
    """Everything that changes during training."""

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jnp.ndarray  # raw uint32 key; step randomness is fold_in(rng, step)

    def model_item(self) -> Dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}

    def train_item(self) -> Dict[str, Any]:
        return {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}

    @classmethod
    def from_items(cls, model: Dict[str, Any], train: Dict[str, Any]) -> "TrainState":
        return cls(step=train["step"], params=model["params"], batch_stats=model["batch_stats"],
                   opt_state=train["opt_state"], rng=train["rng"])


@dataclasses.dataclass(frozen=True)
class AdversarialOptions:
    eps: float
    step_size: float
    steps: int
    random_start: bool


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the train step needs from the config; hashable, so it is a static jit argument."""

    num_classes: int
    train_component: str = "original"  # config.COMPONENTS
    train_radius: float = 8.0
    train_rescale: str = "max"
    inclusive: bool = True
    mixup_alpha: float = 0.0
    adversarial: Optional[AdversarialOptions] = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, num_classes: int) -> "StepOptions":
        adv = config.adversarial
        return cls(num_classes, config.train_component, float(config.train_radius), config.train_rescale,
                   bool(config.inclusive), float(config.mixup_alpha),
                   AdversarialOptions(float(adv.eps), float(adv.step_size), int(adv.steps), bool(adv.random_start))
                   if adv.enabled else None)


# --------------------------------------------------------------------------- step functions


def make_optimizer(config) -> optax.GradientTransformation:
    """The optax optimizer for config.optimizer (one of config.OPTIMIZERS) and its settings."""
    lr = config.learning_rate
    return {
        "sgd": lambda: optax.sgd(lr, momentum=config.momentum or None),
        "adam": lambda: optax.adam(lr),
        "adagrad": lambda: optax.adagrad(lr),
        "adadelta": lambda: optax.adadelta(lr),
        "rmsprop": lambda: optax.rmsprop(lr),
    }[config.optimizer]()


def init_state(model, tx, image_shape, seed: int) -> TrainState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=state_key)


def training_inputs(options: StepOptions, x):
    """The images the model trains on: x, or its rescaled LFC/HFC (Table 1)."""
    if options.train_component == "original":
        return x
    low, high = frequency.split(x, options.train_radius, inclusive=options.inclusive)
    return frequency.rescale(low if options.train_component == "low" else high, options.train_rescale)


def zero_totals() -> Dict[str, jnp.ndarray]:
    """Per-epoch running sums kept on device: loss x examples, correct, examples, first bad step."""
    return {"loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32), "bad_step": jnp.full((), NO_BAD_STEP, jnp.int32)}


def train_step(state: TrainState, totals, images_u8, labels, *, model, tx, options: StepOptions):
    """One optimizer step on a uint8 batch; returns the new state and updated totals."""
    key = jax.random.fold_in(state.rng, state.step)
    mix_key, perm_key, dropout_key, adv_key = jax.random.split(key, 4)
    x = training_inputs(options, measure.to_unit(images_u8))
    if options.adversarial is not None:
        variables = checkpoints.variables_of(state.params, state.batch_stats)
        adv = options.adversarial
        x = attacks.pgd(lambda z: model.apply(variables, z, train=False), x, labels, adv.eps,
                        step_size=adv.step_size, steps=adv.steps, key=adv_key if adv.random_start else None)
        x = jax.lax.stop_gradient(x)
    targets = jax.nn.one_hot(labels, options.num_classes)
    if options.mixup_alpha > 0:
        lam = jax.random.beta(mix_key, options.mixup_alpha, options.mixup_alpha)
        perm = jax.random.permutation(perm_key, x.shape[0])
        x = lam * x + (1 - lam) * x[perm]
        targets = lam * targets + (1 - lam) * targets[perm]

    def loss_fn(params):
        variables = checkpoints.variables_of(params, state.batch_stats)
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
        return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
        batch_stats=updates.get("batch_stats", state.batch_stats), opt_state=opt_state)
    n = labels.shape[0]
    totals = {
        "loss_sum": totals["loss_sum"] + loss * n,
        "correct": totals["correct"] + jnp.sum(jnp.argmax(logits, -1) == labels),
        "count": totals["count"] + n,
        "bad_step": jnp.where(jnp.isfinite(loss), totals["bad_step"], jnp.minimum(totals["bad_step"], state.step)),
    }
    return new_state, totals


def summarize(totals, epoch: int) -> Dict[str, float]:
    """Host-side {loss, BATCH_ACCURACY} of the totals; stops the run at the first non-finite loss."""
    if int(totals["bad_step"]) != NO_BAD_STEP:
        raise TrainingError(
            f"the loss became NaN or inf at step {int(totals['bad_step'])} (epoch {epoch}); the run stopped and no "
            "checkpoint of this state was written. Lower config.learning_rate or check the inputs, then rerun: "
            "training resumes from the last good epoch.")
    count = max(int(totals["count"]), 1)
    return {"loss": float(totals["loss_sum"]) / count, BATCH_ACCURACY: float(totals["correct"]) / count}
