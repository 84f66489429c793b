"""The default experiment config: every key, its meaning and its default.

Config files in ``configs/`` start from `default()` and change what their experiment
needs; `hfcjax.train.validate_config` rejects bad values before any work.
"""

from __future__ import annotations

import ml_collections

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
