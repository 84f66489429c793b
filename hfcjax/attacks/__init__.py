"""Adversarial attacks as pure, batched, jit/vmap-friendly functions.

Every attack takes ``logits_fn(images) -> logits`` (the model in inference mode, its
state closed over), pixels in [0, 1] and integer labels, and returns adversarial
images in [0, 1] within `eps` of the input. `eps` and `step_size` may be traced
scalars, so one compiled function can sweep several eps values with `jax.vmap`.
Each example's result depends only on that example: the loss is a sum over the
batch, so its gradient for one image ignores the others (as long as `logits_fn` is
per-example, i.e. BatchNorm uses running averages).

Inputs are checked where that is cheap: `labels` must be one integer per image; a concrete
`eps` must be finite and >= 0, and concrete labels must lie in [0, classes) (the number of
classes from the logits' shape). Traced values (inside jit/vmap) are not checked.
"""

from hfcjax.attacks.apgd import ApgdState, apgd, apgd_checkpoints, apgd_run, apgd_targeted
from hfcjax.attacks.core import (BANDS, LOSSES, NORMS, TARGETED_LOSSES, AttackResult, Eot, LogitsFn, RandomizedApply,
                                 attack_loss, band_leak, band_projector, check_inputs, dlr_loss, dlr_targeted_loss,
                                 eot_value_and_grad, input_gradient, keep_first_success, margin, per_example_loss)
from hfcjax.attacks.deepfool import DeepFoolResult, deepfool
from hfcjax.attacks.fab import fab, fab_targeted, project_hyperplane
from hfcjax.attacks.pgd import fgsm, pgd, restarts
from hfcjax.attacks.square import square

__all__ = ["ApgdState", "AttackResult", "BANDS", "DeepFoolResult", "Eot", "LOSSES", "NORMS", "RandomizedApply",
           "TARGETED_LOSSES", "LogitsFn",
           "apgd", "apgd_checkpoints", "apgd_run", "apgd_targeted", "attack_loss", "band_leak", "band_projector",
           "check_inputs", "deepfool", "eot_value_and_grad", "dlr_loss", "dlr_targeted_loss", "fab", "fab_targeted", "fgsm", "input_gradient",
           "keep_first_success", "margin", "per_example_loss", "pgd", "project_hyperplane", "restarts", "square"]
