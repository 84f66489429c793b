"""Models and images hfcjax did not make: a user's factory, its preprocessing, an .npz of images.

`load_factory("pkg.module:factory")` imports and calls the factory, which returns either a
``logits_fn(images)`` or a ``(flax_module, variables)`` pair, or either `Randomized` (a model
with randomness at inference, whose logits take a key). `Preprocess` is the model's own
input step (per-channel mean/std, NCHW layout) and runs *inside* the logits function, so
attacks and frequency splits always see pixels in [0, 1], channels last. `apply_fn_of` turns
either form into the ``apply_fn(variables, images)`` every evaluator takes. `load_images`
reads and checks an .npz with ``images`` and ``labels``. Every failure is one ValueError line.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import attacks
from hfcjax.errors import UserError

LAYOUTS = ("NHWC", "NCHW")
PAPER_RADII = (4.0, 8.0, 12.0, 16.0)  # for 32 x 32 images


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """[0, 1] NHWC pixels -> the model's input: (x - mean) / std per channel, then `layout`."""

    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    layout: str = "NHWC"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise UserError(f"--layout {self.layout!r} is unknown; choose one of {LAYOUTS} (the model's input layout).")
        if (self.mean is None) != (self.std is None):
            raise UserError("give --mean and --std together (one value per channel each).")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise UserError(f"--std values must be > 0, got {list(self.std)}.")

    def check(self, channels: int) -> None:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise UserError(f"--{name} has {len(values)} values but the images have {channels} channels.")

    def __call__(self, x):
        if self.mean is not None:
            x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        return jnp.transpose(x, (0, 3, 1, 2)) if self.layout == "NCHW" else x


def load_factory(spec: str) -> Any:
    """Imports `module:factory` and returns what factory() returns."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--model must look like package.module:factory, got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - anything the user's module raises on import
        raise UserError(f"--model {spec}: cannot import {module_name} ({type(e).__name__}: {e}); is it on "
                         "PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--model {spec}: {module_name} has no callable {attr!r}.")
    try:
        return factory()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--model {spec}: calling {attr}() failed ({type(e).__name__}: {e}).") from None


@dataclasses.dataclass(frozen=True)
class Randomized:
    """A model with randomness at inference (a random defence), for AutoAttack's rand version:
    `model` is a ``logits_fn(images, key)``, or a ``(flax module, variables)`` pair whose
    apply draws from the rng collection `rng` (``module.apply(variables, x, rngs={rng: key})``).
    It becomes an `attacks.RandomizedApply`: APGD averages its gradients over draws (EOT),
    every other analysis sees one fixed draw."""

    model: Any
    rng: str = "noise"


def apply_fn_of(model: Any, variables: Optional[Dict] = None, preprocess: Optional[Preprocess] = None
                ) -> Tuple[Callable, Dict]:
    """(apply_fn(variables, x), variables) for a logits_fn, a flax module with `variables`, the
    ``(module, variables)`` pair a factory returns, or any of those `Randomized` (then an
    `attacks.RandomizedApply`, which also takes a key); `preprocess` runs inside."""
    preprocess = preprocess or Preprocess()
    if isinstance(model, Randomized):
        inner, rng = model.model, model.rng
        if isinstance(inner, tuple) and len(inner) == 2 and hasattr(inner[0], "apply"):
            module, variables = inner
            return attacks.RandomizedApply(lambda v, x, key: module.apply(v, preprocess(x), rngs={rng: key})), \
                dict(variables)
        if callable(inner) and not hasattr(inner, "apply"):
            return attacks.RandomizedApply(lambda v, x, key: inner(preprocess(x), key)), {}
        raise UserError(f"Randomized takes a logits_fn(images, key) or a (flax module, variables) pair, got "
                         f"{type(inner).__name__}.")
    if isinstance(model, tuple) and len(model) == 2 and hasattr(model[0], "apply"):
        model, variables = model
    if hasattr(model, "apply") and hasattr(model, "init"):
        if variables is None:
            raise UserError("a Flax module needs its variables: return (module, variables) from the factory.")
        return (lambda v, x: model.apply(v, preprocess(x))), dict(variables)
    if callable(model):
        return (lambda v, x: model(preprocess(x))), {}
    raise UserError(f"the model must be a logits_fn(images) or a (flax module, variables) pair, got "
                     f"{type(model).__name__}.")


def num_classes(apply_fn: Callable, variables: Dict, image_shape: Sequence[int], layout: str = "NHWC") -> int:
    """The number of logits the model returns for one image, or a ValueError saying why it failed."""
    try:
        out = jax.eval_shape(lambda x: apply_fn(variables, x), jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    except Exception as e:  # noqa: BLE001 - whatever the user's model raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"the model does not accept images of shape [N, {', '.join(map(str, image_shape))}] "
                         f"(given to it as {layout}): {type(e).__name__}: {first[:300]}") from None
    if len(out.shape) != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise UserError(f"the model must return logits [N, classes] with classes >= 2, got shape {out.shape}.")
    return int(out.shape[1])


def load_images(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images, labels) from an .npz holding `images` (uint8 [N, H, W, C], or floats in [0, 1])
    and integer `labels` [N]."""
    try:
        with np.load(path) as f:
            missing = [k for k in ("images", "labels") if k not in f]
            if missing:
                raise UserError(f"--data {path} has no {' and no '.join(missing)} array (it has {list(f.keys())}).")
            images, labels = f["images"], f["labels"]
    except (OSError, EOFError, ValueError) as e:  # ValueError: not an .npz of arrays (numpy's pickle refusal)
        raise UserError(f"--data {path} cannot be read as an .npz of arrays with keys images and labels "
                        f"({type(e).__name__}).") from None
    if images.ndim != 4:
        raise UserError(f"--data images must be [N, H, W, C], got shape {images.shape}.")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        raise UserError(f"--data images look channels-first {images.shape}; store them as [N, H, W, C] "
                         "(np.transpose(x, (0, 2, 3, 1))). --layout is the model's input layout, not the data's.")
    if not len(images):
        raise UserError(f"--data {path} holds no images (shape {images.shape}).")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise UserError(f"--data images must be uint8 or floats in [0, 1], got dtype {images.dtype}.")
        if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
            raise UserError(f"--data float images must lie in [0, 1], got values from {images.min():g} to "
                             f"{images.max():g}; pass uint8 pixels or divide by 255.")
        images = images.astype(np.float32)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"--data labels must be integers [N], got dtype {labels.dtype} shape {labels.shape}.")
    if len(labels) != len(images):
        raise UserError(f"--data has {len(images)} images but {len(labels)} labels.")
    return images, labels.astype(np.int32)


def check_labels(labels: np.ndarray, classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"labels must lie in [0, {classes}) for a model with {classes} outputs; got values from "
                         f"{labels.min()} to {labels.max()}.")


def default_radii(height: int, width: int) -> Tuple[float, ...]:
    """The paper's radii (4, 8, 12, 16 for 32 x 32), scaled down with the image when they do
    not fit inside it (the largest may be at most half the smaller side)."""
    scale = min(1.0, min(height, width) / 32)
    return tuple(round(r * scale, 2) for r in PAPER_RADII)
