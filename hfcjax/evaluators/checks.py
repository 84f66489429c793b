"""`checks`: AutoAttack's sanity checks of the model itself, on one batch of the original
model: an output that changes between two identical passes (randomness), an output that
looks like probabilities (a softmax layer), and images whose input gradient is exactly
zero. Each finding is a warning; the evaluation goes on.

Files: checks.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import attacks, measure, reports
from hfcjax.evaluators import common


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = True
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    del c  # nothing to check beyond `enabled`


def model_checks(apply_fn: common.ApplyFn, variables, images_u8: np.ndarray, labels: np.ndarray) -> List[str]:
    """The warnings of AutoAttack's checks on these images (usually one batch)."""
    x = measure.to_unit(jnp.asarray(images_u8))
    first, second = apply_fn(variables, x), apply_fn(variables, x)
    warn = []
    if not np.allclose(np.asarray(first), np.asarray(second)):
        warn.append("the model's output changes between two identical passes (randomness at inference): attacks "
                    "and accuracies are unreliable; evaluate it deterministically")
    out = np.asarray(first, np.float64)
    if out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(-1), 1, atol=1e-4):
        warn.append("the model's outputs look like probabilities (a softmax output layer?): attacks expect "
                    "logits; gradients through a second softmax vanish")
    grad = attacks.input_gradient(lambda z: apply_fn(variables, z), x, jnp.asarray(labels))
    zero = int(np.sum(np.all(np.asarray(grad).reshape(len(x), -1) == 0, axis=1)))
    if zero:
        warn.append(f"{zero} of {len(x)} images have an input gradient of exactly zero: gradient-based attacks "
                    "cannot move them (gradient masking); trust the gradient-free attacks there")
    return warn


class Evaluator(common.Evaluator):
    name = "checks"
    stage = 0

    def run(self, inputs: common.Inputs) -> List[str]:
        batch = self.shared.batch_size
        warnings = model_checks(self.apply_fn, inputs.variables, inputs.images[:batch], inputs.labels[:batch])
        for warning in warnings:
            self.log(f"  warning [model]: {warning}")
        return warnings

    def markdown(self, warnings: List[str]) -> str:
        return "model checks: " + ("; ".join(warnings) if warnings else "passed (deterministic, logits, gradients)")

    def write(self, warnings: List[str], out_dir, inputs: common.Inputs) -> None:
        reports.write_json(Path(out_dir) / "checks.json", {"warnings": warnings})
