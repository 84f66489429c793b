"""The single source of truth for settings: every key of a training run and of an
evaluation, its meaning, its default, its allowed values and its validation.

Config files in ``configs/`` start from `default()` and change what their experiment
needs. `validate` (training) and `validate_evaluation` (evaluation) reject bad values with one
line naming the key and what is allowed, before any work. Allowed values of keys that
name something in a registry (datasets, models, split rescaling) are read from the
registry's owner, so each list is defined once.
"""

from __future__ import annotations

import math
from typing import Sequence

import ml_collections

from hfcjax import data, evaluators, frequency, models
from hfcjax.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adagrad", "adadelta", "rmsprop")
COMPONENTS = ("original", "low", "high")
DTYPES = ("float32", "bfloat16")
RECALIBRATE_BN = ("auto", "yes", "no")
# Keys a resumed run may change freely: they do not change the numbers of the epochs trained.
# (num_epochs only extends or shortens the run; the rest is logging, checkpoint retention,
# where the same data is read from, and the evaluation batch, which only splits integer counts.)
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps", "keep_checkpoints", "eval_batch_size", "data_dir",
                     "data_source", "draw_figures")
RESUMABLE_SECTIONS = ("evaluation.", "evals.")  # evaluation settings never change a trained epoch


def default() -> ml_collections.ConfigDict:
    """The paper's vanilla set-up (Section 4.2) on CIFAR-10 with ResNet-18."""
    c = ml_collections.ConfigDict()
    # Data. data_dir '' means $HFCJAX_DATA_DIR, then /usr/share/datasets; source auto|files|tfds.
    c.dataset = "cifar10"
    c.data_dir = ""
    c.data_source = "auto"
    c.train_subset = 0  # first N training images (0 = all)
    c.test_subset = 0  # first N test images (0 = all)
    c.eval_train_subset = 0  # first N training images evaluated each epoch (0 = all used for training)
    # Model: see hfcjax.models (batch_norm, dropout_rate; Xavier init always).
    c.model = "resnet18"
    c.batch_norm = False  # the paper's vanilla models have no BatchNorm
    c.dropout_rate = 0.0  # paper's dropout heuristic: 0.5 on fully-connected layers
    c.compute_dtype = "float32"  # or bfloat16 (parameters stay float32)
    # Optimisation.
    c.optimizer = "adam"  # sgd | adam | adagrad | adadelta | rmsprop
    c.learning_rate = 1e-4
    c.momentum = 0.0  # sgd only, in [0, 1)
    c.batch_size = 100  # global batch, split over all devices
    c.num_epochs = 100
    c.seed = 0  # integer >= 0: initialisation, batch order, step randomness, label shuffling
    # Heuristics and data variants (Sections 4 and 5).
    c.shuffle_labels = False  # M_shuffle: training labels permuted once by a permutation from the seed
    c.mixup_alpha = 0.0  # paper: 0.5
    c.train_component = "original"  # original | low | high: train on x, x_l or x_h (Table 1)
    c.train_radius = 8.0
    c.train_rescale = "max"  # none | max (authors' code) | minmax, applied to x_l / x_h when training
    c.adversarial = ml_collections.ConfigDict()
    c.adversarial.enabled = False  # PGD adversarial training (Madry et al.)
    c.adversarial.eps = 8 / 255
    c.adversarial.step_size = 0.8 / 255  # eps / 10
    c.adversarial.steps = 10
    c.adversarial.random_start = False
    # Tracking of LFC/HFC accuracy after every epoch.
    c.track_radii = (4.0, 8.0, 12.0, 16.0)
    c.inclusive = True  # d <= r (paper) or d < r (authors' code)
    c.eval_batch_size = 500
    # Logging and checkpoints.
    c.log_every_steps = 50
    c.keep_checkpoints = 3  # the last N epochs are kept, plus the best by test accuracy
    c.draw_figures = True  # split_examples.png (at the start) and curves.png (at the end) in the run's figures/
    # Evaluation (`hfcjax.evaluate`): what every analysis shares, and one section per analysis.
    c.evaluation = evaluation_default()
    c.evals = evaluators.default_config()
    return c


def get_config() -> ml_collections.ConfigDict:
    """`default()`, for ``--config`` flags that load this module as a config file."""
    return default()


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def result_changes(saved: dict, new: ml_collections.ConfigDict, allowed=()) -> list:
    """'key: old -> new' for every key whose value differs between a run's saved config and
    `new`, except RESUMABLE_CHANGES and the keys in `allowed` (dotted, e.g. adversarial.eps)."""
    old, cur = _flat(dict(saved)), _flat(new.to_dict())
    skip = set(RESUMABLE_CHANGES) | set(allowed)
    return [f"{k}: {old[k]!r} -> {cur[k]!r}" for k in sorted(old.keys() & cur.keys())
            if k not in skip and not k.startswith(RESUMABLE_SECTIONS) and old[k] != cur[k]]


def evaluation_default() -> ml_collections.ConfigDict:
    """``config.evaluation``: what every evaluator of `hfcjax.evaluate` shares (the model
    variants of Table 2, the images, batches and seed); each analysis has its own section
    in ``config.evals`` (`hfcjax.evaluators`)."""
    e = ml_collections.ConfigDict()
    e.rhos = (0.0, 0.1, 0.25, 0.5, 1.0)  # smoothing strengths of Eq. 3 (>= 0); 0 = the trained kernels
    e.layers = (rf"^{models.FIRST_CONV}/kernel$",)  # regexes on parameter paths of the kernels to smooth
    e.recalibrate_bn = "auto"  # auto | yes | no: also rows with BatchNorm statistics re-estimated
    e.recalibrate_examples = 2000  # training images used to re-estimate BatchNorm statistics
    e.num_examples = 0  # the first N test images (0 = all)
    e.batch_size = 200  # images per compiled call (rounded up to a multiple of the devices)
    e.seed = 0  # seed of the random attacks (random starts, Square) and heat maps
    e.data_dir = ""  # '' = the data directory saved in the run's config
    return e


def evaluation_config(base: ml_collections.ConfigDict | None = None, **sections) -> ml_collections.ConfigDict:
    """The evaluation part of a config (``evaluation`` and ``evals``) of `base` (a whole
    config; default: `default()`), with `sections` overriding keys by section, e.g.
    ``evaluation_config(evaluation={"rhos": (0.0,)}, heatmap={"enabled": True})``; validated."""
    base = base if base is not None else default()
    e = ml_collections.ConfigDict()
    e.evaluation = evaluation_default()
    e.evaluation.update(base.get("evaluation", {}))
    e.evals = evaluators.default_config()
    for name in e.evals.keys():
        e.evals[name].update(base.get("evals", {}).get(name, {}))
    for name, values in sections.items():
        target = e.evaluation if name == "evaluation" else e.evals.get(name)
        if target is None:
            raise UserError(f"unknown evaluation section {name!r}; known: {['evaluation', *e.evals.keys()]}.")
        for key, value in values.items():
            if key not in target:
                raise UserError(f"unknown key {key!r} of config.{'' if name == 'evaluation' else 'evals.'}{name}; "
                                 f"known: {sorted(target.keys())}.")
            target[key] = tuple(value) if isinstance(value, list) else value
    validate_evaluation(e)
    return e


# --------------------------------------------------------------------------- validation


def _fail(key: str, message: str):
    raise UserError(f"config.{key} {message}")


def _one_of(config, key: str, allowed: Sequence[str], prefix: str = "") -> None:
    if config[key] not in allowed:
        _fail(prefix + key, f"{config[key]!r} is unknown; choose one of {tuple(sorted(allowed))}.")


def _int_at_least(config, key: str, low: int, what: str, prefix: str = "") -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(prefix + key, f"must be {what}, got {value!r}.")


def _radius(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"config.{key}: radii must be >= 0 and finite, got {value!r}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key of a training config and what is allowed."""
    data.get_spec(config.dataset)
    for key, allowed in (("data_source", data.SOURCES), ("model", tuple(models.MODELS)),
                         ("optimizer", OPTIMIZERS), ("train_component", COMPONENTS),
                         ("train_rescale", frequency.RESCALE_MODES), ("compute_dtype", DTYPES)):
        _one_of(config, key, allowed)
    for key in ("batch_size", "num_epochs", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        _int_at_least(config, key, 1, "a positive integer")
    for key in ("train_subset", "test_subset", "eval_train_subset"):
        _int_at_least(config, key, 0, "an integer >= 0 (0 = all)")
    _int_at_least(config, "seed", 0, "an integer >= 0")
    if config.train_subset and config.eval_train_subset > config.train_subset:
        _fail("eval_train_subset", f"({config.eval_train_subset}) must not exceed config.train_subset "
                                   f"({config.train_subset}): it evaluates the first N training images.")
    if not config.learning_rate > 0:
        _fail("learning_rate", f"must be > 0, got {config.learning_rate!r}.")
    if not 0.0 <= config.momentum < 1.0:
        _fail("momentum", f"must be in [0, 1), got {config.momentum!r}.")
    if not 0.0 <= config.dropout_rate < 1.0:
        _fail("dropout_rate", f"must be in [0, 1), got {config.dropout_rate!r}.")
    if not config.mixup_alpha >= 0:
        _fail("mixup_alpha", f"must be >= 0 (0 = off), got {config.mixup_alpha!r}.")
    _radius("train_radius", config.train_radius)
    for r in config.track_radii:
        _radius("track_radii", r)
    adv = config.adversarial
    if adv.enabled and not (0 <= adv.eps <= 1 and adv.step_size > 0 and adv.steps > 0):
        _fail("adversarial", "needs 0 <= eps <= 1, step_size > 0 and steps > 0.")
    if "evals" in config or "evaluation" in config:
        validate_evaluation(config)


def validate_evaluation(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key of ``config.evaluation`` or ``config.evals``."""
    for name, section, defaults in (("evaluation", config.get("evaluation"), evaluation_default()),
                                    ("evals", config.get("evals"), None)):
        if section is None:
            _fail(name, "is missing; start the config from hfcjax.config.default().")
        if defaults is not None and set(section.keys()) != set(defaults.keys()):
            _fail(name, f"must have exactly the keys {sorted(defaults.keys())}, got {sorted(section.keys())}.")
    e = config.evaluation
    rhos = list(e.rhos)
    if not rhos or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and r >= 0)
                       for r in rhos):
        _fail("evaluation.rhos", f"must be finite numbers >= 0, got {rhos}.")
    for key, low in (("batch_size", 1), ("num_examples", 0), ("recalibrate_examples", 1), ("seed", 0)):
        _int_at_least(e, key, low, f"an integer >= {low}", "evaluation.")
    _one_of(e, "recalibrate_bn", RECALIBRATE_BN, "evaluation.")
    if not list(e.layers):
        _fail("evaluation.layers", "needs at least one regex on parameter paths, e.g. '^stem/kernel$'.")
    evaluators.validate(config.evals)


