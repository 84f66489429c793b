"""Flax linen classifiers used in the paper, built by `create_model(name, num_classes, **options)`.

Every model takes pixels in [0, 1] as ``[N, H, W, C]`` (grey or colour, any size the
architecture allows) and returns logits. Conventions shared by all of them:

* The first convolution is named ``stem``: its kernel is at ``params/stem/kernel``
  (HWIO). Kernel smoothing (Eq. 3) selects it by that path.
* ``batch_norm=True`` puts BatchNorm (scale 1, offset 0 at init) after convolutions;
  with ``batch_norm=False`` convolutions get a bias instead.
* ``dropout_rate`` applies dropout before every fully-connected layer but the input.
* Kernels use Xavier (Glorot) uniform initialisation, as in the paper.
* ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
* ``symmetric_padding=True`` pads ``k // 2`` on every side of a k x k convolution or pool, as
  PyTorch's ``padding=k // 2`` does; the default XLA ``SAME`` puts the odd padding row of a
  stride-2 layer on an even input at the bottom/right instead. Weights converted from PyTorch
  (`hfcjax.torch_weights`) need it; it changes no parameter.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hfcjax.errors import UserError

FIRST_CONV = "stem"
BN_MOMENTUM = 0.9  # running = BN_MOMENTUM * running + (1 - BN_MOMENTUM) * batch
xavier = nn.initializers.xavier_uniform()


class _Base(nn.Module):
    """Shared options and layer factories."""

    num_classes: int = 10
    batch_norm: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    symmetric_padding: bool = False

    def conv(self, features, kernel, strides=1, name=None, padding="SAME"):
        if padding == "SAME":
            return _conv_fn(self.batch_norm, self.dtype, self.symmetric_padding)(
                features, (kernel, kernel), (strides, strides), name=name)
        return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                       use_bias=not self.batch_norm, kernel_init=xavier, dtype=self.dtype, name=name)

    def norm(self, train: bool, name=None):
        return _norm_fn(self.batch_norm, self.dtype, train)(name=name)

    def dense(self, features, name=None):
        return nn.Dense(features, kernel_init=xavier, dtype=self.dtype, name=name)

    def classifier(self, x, hidden: Sequence[int], train: bool, dropout_input: bool = False):
        """Flatten, hidden dense layers with ReLU, then the logits layer; dropout feeds every
        dense layer after the first (and the first too with `dropout_input`)."""
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = x.reshape((x.shape[0], -1))
        x = dropout(x) if dropout_input else x
        for i, width in enumerate(hidden):
            x = dropout(nn.relu(self.dense(width, name=f"fc{i + 1}")(x)))
        return self.dense(self.num_classes, name="logits")(x).astype(jnp.float32)


# --------------------------------------------------------------------------- ResNets


def _padding(kernel_size, symmetric):
    return [(k // 2, k // 2) for k in kernel_size] if symmetric else "SAME"


def _conv_fn(batch_norm, dtype, symmetric_padding):
    """conv(features, kernel_size, strides=(1, 1), name=None): a "same" convolution (see
    `symmetric_padding` in the module docstring), biased only without BatchNorm."""
    def conv(features, kernel_size, strides=(1, 1), name=None):
        return nn.Conv(features, kernel_size, strides=strides, padding=_padding(kernel_size, symmetric_padding),
                       use_bias=not batch_norm, kernel_init=xavier, dtype=dtype, name=name)
    return conv


def _norm_fn(batch_norm, dtype, train):
    """BatchNorm factory (scale 1, offset 0 at init), or identity without BatchNorm."""
    if not batch_norm:
        return lambda **kw: (lambda v: v)
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=1e-5, dtype=dtype)


class _Residual(nn.Module):
    """Fields and the projection shortcut shared by the residual blocks."""

    features: int
    strides: int
    batch_norm: bool
    dtype: Any
    symmetric_padding: bool = False
    shortcut_from_input: bool = False  # pre-activation blocks: project x, not relu(bn(x))

    def layers(self, train):
        return (_conv_fn(self.batch_norm, self.dtype, self.symmetric_padding),
                _norm_fn(self.batch_norm, self.dtype, train))

    def add_shortcut(self, x, y, conv, norm):
        """relu(x + y), projecting x with a 1x1 conv (and BatchNorm) when the shapes differ."""
        if x.shape != y.shape:
            x = conv(y.shape[-1], (1, 1), (self.strides, self.strides), name="shortcut")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(x + y)


class _BasicBlock(_Residual):
    @nn.compact
    def __call__(self, x, train):
        conv, norm = self.layers(train)
        y = nn.relu(norm()(conv(self.features, (3, 3), (self.strides, self.strides))(x)))
        y = norm()(conv(self.features, (3, 3))(y))
        return self.add_shortcut(x, y, conv, norm)


class _Bottleneck(_Residual):
    @nn.compact
    def __call__(self, x, train):
        conv, norm = self.layers(train)
        y = nn.relu(norm()(conv(self.features, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.features, (3, 3), (self.strides, self.strides))(y)))
        y = norm()(conv(self.features * 4, (1, 1))(y))
        return self.add_shortcut(x, y, conv, norm)


class ResNet(_Base):
    """ResNet in CIFAR form (3x3 stem, stride 1, no max-pool) or ImageNet form (7x7/2 + pool)."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: Callable = _BasicBlock
    imagenet_stem: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        if self.imagenet_stem:
            x = self.conv(64, 7, 2, name=FIRST_CONV)(x)
        else:
            x = self.conv(64, 3, 1, name=FIRST_CONV)(x)
        x = nn.relu(self.norm(train, name="stem_bn")(x))
        if self.imagenet_stem:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=_padding((3, 3), self.symmetric_padding))
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                block = self.block(64 * 2**i, strides, self.batch_norm, self.dtype, self.symmetric_padding,
                                   name=f"stage{i + 1}_block{j + 1}")
                x = block(x, train)
        return self.classifier(jnp.mean(x, axis=(1, 2)), (), train, dropout_input=True)


class _PreActBlock(_Residual):
    @nn.compact
    def __call__(self, x, train):
        conv, norm = self.layers(train)
        y = nn.relu(norm()(x))
        shortcut = x
        if x.shape[-1] != self.features or self.strides != 1:
            source = x if self.shortcut_from_input else y
            shortcut = conv(self.features, (1, 1), (self.strides, self.strides), name="shortcut")(source)
        y = conv(self.features, (3, 3), (self.strides, self.strides))(y)
        y = conv(self.features, (3, 3))(nn.relu(norm()(y)))
        return shortcut + y


class PreActResNet(_Base):
    """Pre-activation ResNet (He et al. 2016): a 3x3 stem, `n` pre-activation blocks per
    stage of `widths` channels (stride 2 from the second stage), then BN-ReLU (`final_norm`),
    global mean and the logits layer. Defaults: the authors' CIFAR ResNet (6n+2 = 32 layers,
    16/32/64 channels); ``wrn28_10`` and ``preact_resnet18`` are the same class."""

    n: int = 5
    stem_features: int = 16
    widths: Sequence[int] = (16, 32, 64)
    final_norm: bool = True
    shortcut_from_input: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.conv(self.stem_features, 3, 1, name=FIRST_CONV)(x.astype(self.dtype))
        for i, features in enumerate(self.widths):
            for j in range(self.n):
                strides = 2 if i > 0 and j == 0 else 1
                block = _PreActBlock(features, strides, self.batch_norm, self.dtype, self.symmetric_padding,
                                     self.shortcut_from_input, name=f"stage{i + 1}_block{j + 1}")
                x = block(x, train)
        if self.final_norm:
            x = nn.relu(self.norm(train, name="final_bn")(x))
        return self.classifier(jnp.mean(x, axis=(1, 2)), (), train, dropout_input=True)


# --------------------------------------------------------------------------- plain CNNs


class _PlainCNN(_Base):
    """conv(-BN)-ReLU stacks with max-pools ('M'), then a dense classifier."""

    layers: Sequence[Any] = ()  # (features, kernel) tuples and "M"
    hidden: Sequence[int] = ()
    conv_padding: str = "SAME"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        n = 0
        for layer in self.layers:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
                continue
            features, kernel = layer
            name = FIRST_CONV if n == 0 else f"conv{n + 1}"
            x = self.conv(features, kernel, name=name, padding=self.conv_padding)(x)
            x = nn.relu(self.norm(train, name=f"{name}_bn")(x))
            n += 1
        return self.classifier(x, self.hidden, train)


def _vgg(cfg):
    return [("M" if v == "M" else (v, 3)) for v in cfg]


_VGG11 = _vgg([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"])
_VGG16 = _vgg([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"])

MODELS = {
    "resnet18": lambda **kw: ResNet(stage_sizes=(2, 2, 2, 2), block=_BasicBlock, **kw),
    "resnet50": lambda **kw: ResNet(stage_sizes=(3, 4, 6, 3), block=_Bottleneck, **kw),
    "cifar_resnet": lambda **kw: PreActResNet(**kw),
    "preact_resnet18": lambda **kw: PreActResNet(**{"n": 2, "stem_features": 64, "widths": (64, 128, 256, 512),
                                                    **kw}),
    "wrn28_10": lambda **kw: PreActResNet(**{"n": 4, "stem_features": 16, "widths": (160, 320, 640), **kw}),
    "lenet": lambda **kw: _PlainCNN(layers=[(6, 5), "M", (16, 5), "M"], hidden=(120, 84),
                                    conv_padding="VALID", **kw),
    "alexnet": lambda **kw: _PlainCNN(layers=[(64, 5), "M", (192, 5), "M", (384, 3), (256, 3), (256, 3), "M"],
                                      hidden=(1024, 1024), **kw),
    "vgg11": lambda **kw: _PlainCNN(layers=_VGG11, hidden=(512,), **kw),
    "vgg16": lambda **kw: _PlainCNN(layers=_VGG16, hidden=(512,), **kw),
    "mnist_cnn": lambda **kw: _PlainCNN(layers=[(32, 5), "M", (64, 5), "M"], hidden=(1024,), **kw),
}
OPTIONS = ("batch_norm", "dropout_rate", "dtype", "imagenet_stem", "n", "symmetric_padding", "final_norm",
           "shortcut_from_input")


def create_model(name: str, num_classes: int, **options) -> nn.Module:
    """Builds model `name` with `num_classes` outputs; options: batch_norm, dropout_rate, dtype."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise UserError(f"unknown model options {sorted(unknown)}; known: {OPTIONS}.")
    rate = options.get("dropout_rate", 0.0)
    if not 0.0 <= rate < 1.0:
        raise UserError(f"dropout_rate must be in [0, 1), got {rate}.")
    if isinstance(options.get("dtype"), str):
        options["dtype"] = jnp.dtype(options["dtype"])
    return MODELS[name](num_classes=num_classes, **options)


def from_config(config, num_classes: int) -> nn.Module:
    """The model an experiment config describes (keys model, batch_norm, dropout_rate, compute_dtype);
    training and evaluation both build it here, so a restored checkpoint gets the same module."""
    return create_model(config.model, num_classes, batch_norm=config.batch_norm,
                        dropout_rate=config.dropout_rate, dtype=config.compute_dtype)
