"""The default experiment config and its validation.

Config files in ``configs/`` start from `default()` and change what their experiment
needs; `validate` rejects bad values with a message naming the key, before any work.
"""

from __future__ import annotations

import ml_collections

from hfcjax import data, frequency, models

OPTIMIZERS = ("sgd", "adam", "adagrad", "adadelta", "rmsprop")
COMPONENTS = ("original", "low", "high")
DTYPES = ("float32", "bfloat16")


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
    c.momentum = 0.0  # sgd only
    c.batch_size = 100  # global batch, split over all devices
    c.num_epochs = 100
    c.seed = 0
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


def _positive_int(config, key):
    value = config[key]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key and what is allowed."""
    data.get_spec(config.dataset)
    if config.data_source not in data.SOURCES:
        raise ValueError(f"config.data_source must be one of {data.SOURCES}, got {config.data_source!r}.")
    if config.model not in models.MODELS:
        raise ValueError(f"config.model {config.model!r} is unknown; choose one of {sorted(models.MODELS)}.")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"config.optimizer {config.optimizer!r} is unknown; choose one of {OPTIMIZERS}.")
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
    if config.train_component not in COMPONENTS:
        raise ValueError(f"config.train_component must be one of {COMPONENTS}, got {config.train_component!r}.")
    if config.train_rescale not in frequency.RESCALE_MODES:
        raise ValueError(f"config.train_rescale must be one of {frequency.RESCALE_MODES}, got {config.train_rescale!r}.")
    if config.compute_dtype not in DTYPES:
        raise ValueError(f"config.compute_dtype must be one of {DTYPES}, got {config.compute_dtype!r}.")
    radii = [config.train_radius, *config.track_radii]
    if any(not r >= 0 for r in radii):
        raise ValueError(f"radii must be >= 0: train_radius={config.train_radius}, track_radii={config.track_radii}.")
    adv = config.adversarial
    if adv.enabled and not (0 <= adv.eps <= 1 and adv.step_size > 0 and adv.steps > 0):
        raise ValueError("config.adversarial needs 0 <= eps <= 1, step_size > 0 and steps > 0.")
