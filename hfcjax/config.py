"""The single source of truth for settings: every key of a training run and of an
evaluation, its meaning, its default, its allowed values and its validation.

Config files in ``configs/`` start from `default()` and change what their experiment
needs. `validate` (training) and `validate_eval` (evaluation) reject bad values with one
line naming the key and what is allowed, before any work. Allowed values of keys that
name something in a registry (datasets, models, split rescaling) are read from the
registry's owner, so each list is defined once.
"""

from __future__ import annotations

import math
from typing import Sequence

import ml_collections

from hfcjax import data, frequency, models

OPTIMIZERS = ("sgd", "adam", "adagrad", "adadelta", "rmsprop")
COMPONENTS = ("original", "low", "high")
DTYPES = ("float32", "bfloat16")
RECALIBRATE_BN = ("auto", "yes", "no")
# Keys a resumed run may change freely: they do not change the numbers of the epochs trained.
# (num_epochs only extends or shortens the run; the rest is logging, checkpoint retention,
# where the same data is read from, and the evaluation batch, which only splits integer counts.)
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps", "keep_checkpoints", "eval_batch_size", "data_dir",
                     "data_source")


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
    return c


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
            if k not in skip and old[k] != cur[k]]


def eval_default() -> ml_collections.ConfigDict:
    """Settings of `hfcjax.evaluate` (Section 6: Table 2, Figures 2 and 7), one key per flag."""
    e = ml_collections.ConfigDict()
    e.rhos = (0.0, 0.1, 0.25, 0.5, 1.0)  # smoothing strengths of Eq. 3 (>= 0); 0 = the trained kernels
    e.eps = (0.03, 0.06, 0.09)  # L-inf budgets, pixels in [0, 1]
    e.num_examples = 0  # the first N test images (0 = all)
    e.batch_size = 200  # images per compiled attack call (rounded up to a multiple of the devices)
    e.pgd_steps = 20  # PGD steps at every eps; the strong PGD uses twice as many
    e.pgd_step_fraction = 0.125  # PGD step size as a fraction of eps (eps / 8)
    e.strong_restarts = 3  # random restarts of the strong PGD at the largest eps
    e.square_queries = 300  # queries of the gradient-free Square attack at the largest eps (0 = off)
    e.layers = (rf"^{models.FIRST_CONV}/kernel$",)  # regexes on parameter paths of the kernels to smooth
    e.recalibrate_bn = "auto"  # auto | yes | no: also rows with BatchNorm statistics re-estimated
    e.recalibrate_examples = 2000  # training images used to re-estimate BatchNorm statistics
    e.epoch = "latest"  # checkpoint to evaluate: latest, best or an epoch number
    e.svd_ranks = (4, 8, 12, 16)  # ranks of Section 8's SVD split in the frequency report
    # Beyond the paper.
    e.heatmap_eps = 0.0  # > 0: Fourier heat map (Yin et al. 2019) at this L2 norm for every rho (0 = off)
    e.band_radius = 0.0  # > 0: also PGD confined to the LFC / HFC of this radius at every eps (0 = off)
    e.spectra = True  # radial spectra of the successful perturbations of every attack
    e.apgd_steps = 0  # > 0: APGD-CE and APGD-DLR (Croce & Hein 2020) with this many steps at the largest eps
    e.seed = 0  # seed of the random attacks (random starts, Square)
    e.data_dir = ""  # '' = the data directory saved in the run's config
    return e


# --------------------------------------------------------------------------- validation


def _fail(key: str, message: str):
    raise ValueError(f"config.{key} {message}")


def _one_of(config, key: str, allowed: Sequence[str]) -> None:
    if config[key] not in allowed:
        _fail(key, f"{config[key]!r} is unknown; choose one of {tuple(sorted(allowed))}.")


def _int_at_least(config, key: str, low: int, what: str) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(key, f"must be {what}, got {value!r}.")


def _radius(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"config.{key}: radii must be >= 0 and finite, got {value!r}.")


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


def validate_eval(e: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad evaluation setting and what is allowed."""
    eps, rhos = list(e.eps), list(e.rhos)
    if not eps or any(not 0 <= v <= 1 for v in eps):
        raise ValueError(f"eps values must lie in [0.0, 1.0] (pixels are in [0, 1]), got {eps}.")
    if not rhos or any(not (math.isfinite(r) and r >= 0) for r in rhos):
        raise ValueError(f"rho values must be finite and >= 0, got {rhos}.")
    for key, low in (("pgd_steps", 1), ("strong_restarts", 1), ("batch_size", 1), ("square_queries", 0),
                     ("num_examples", 0), ("recalibrate_examples", 1), ("seed", 0), ("apgd_steps", 0)):
        _int_at_least(e, key, low, f"an integer >= {low}")
    for key in ("heatmap_eps", "band_radius"):
        if not (math.isfinite(e[key]) and e[key] >= 0):
            _fail(key, f"must be a finite number >= 0 (0 = off), got {e[key]!r}.")
    if not 0 < e.pgd_step_fraction <= 1:
        _fail("pgd_step_fraction", f"must be in (0, 1], got {e.pgd_step_fraction!r}.")
    _one_of(e, "recalibrate_bn", RECALIBRATE_BN)
    if not list(e.layers):
        _fail("layers", "needs at least one regex on parameter paths, e.g. '^stem/kernel$'.")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in e.svd_ranks):
        _fail("svd_ranks", f"must be integers >= 0, got {list(e.svd_ranks)}.")
    if str(e.epoch) not in ("latest", "best") and not str(e.epoch).isdigit():
        _fail("epoch", f"must be latest, best or an epoch number, got {e.epoch!r}.")


def eval_config(**overrides) -> ml_collections.ConfigDict:
    """`eval_default()` with keyword overrides (unknown keys are refused), validated."""
    e = eval_default()
    unknown = set(overrides) - set(e.keys())
    if unknown:
        raise ValueError(f"unknown evaluation settings {sorted(unknown)}; known: {sorted(e.keys())}.")
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "recalibrate_bn" and isinstance(value, bool):
            value = "yes" if value else "no"
        elif key == "epoch":
            value = str(value)
        elif isinstance(value, list):
            value = tuple(value)
        e[key] = value
    validate_eval(e)
    return e
