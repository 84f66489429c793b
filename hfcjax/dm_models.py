"""DeepMind's CIFAR networks, as RobustBench ships them (``DMWideResNet``, ``DMPreActResNet``
in its ``dm_wide_resnet.py``), for the converted weights of `torch_weights`: the leading
entries of the RobustBench leaderboard use them.

What sets them apart from hfcjax's own ResNets, and is reproduced here: optional zero
padding of the input (`padding`), the mean/std normalisation inside the model (buffers of
the state_dict), the activation (ReLU or swish), convolutions padded like TensorFlow's
``SAME`` (a stride-2 3x3 convolution pads one row and column at the bottom and right only),
and global pooling as a fixed average-pool window (8 for the WideResNet, 4 for the
PreActResNet). The module takes pixels in [0, 1], NHWC; BatchNorm epsilon is PyTorch's, 1e-5.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "swish": nn.swish}


def _same(strides: int):
    """TensorFlow's SAME for a 3x3 convolution: (1, 1) per side at stride 1, (0, 1) at stride 2."""
    return ((1, 1), (1, 1)) if strides == 1 else ((0, 1), (0, 1))


def _conv(features, kernel, strides, padding, name):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding, use_bias=False,
                   name=name)


def _bn(train, name):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class _Input(nn.Module):
    """Zero padding, then (x - mean) / std: what DeepMind's models do to their input first."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    padding: int

    def __call__(self, x):
        if self.padding:
            x = jnp.pad(x, ((0, 0), (self.padding,) * 2, (self.padding,) * 2, (0, 0)))
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


class _Block(nn.Module):
    features: int
    strides: int
    activation: str


class _WideBlock(_Block):
    @nn.compact
    def __call__(self, x, train):
        act = ACTIVATIONS[self.activation]
        projected = x.shape[-1] != self.features
        out = act(_bn(train, "batchnorm_0")(x))
        if projected:  # the shortcut then reads the activated input too
            x = out
        out = _conv(self.features, 3, self.strides, _same(self.strides), "conv_0")(out)
        out = _conv(self.features, 3, 1, ((1, 1), (1, 1)), "conv_1")(act(_bn(train, "batchnorm_1")(out)))
        shortcut = _conv(self.features, 1, self.strides, "VALID", "shortcut")(x) if projected else x
        return shortcut + out


class _DMNet(nn.Module):
    """What both networks take: classes, activation, the input's normalisation and padding."""

    num_classes: int = 10
    activation: str = "relu"
    mean: Tuple[float, ...] = (0.0, 0.0, 0.0)
    std: Tuple[float, ...] = (1.0, 1.0, 1.0)
    padding: int = 0


class DMWideResNet(_DMNet):
    """WideResNet-depth-width: ``(depth - 4) / 6`` blocks per group, widths 16 w, 32 w, 64 w."""

    depth: int = 28
    width: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _Input(self.mean, self.std, self.padding, name="input")(x)
        x = _conv(16, 3, 1, ((1, 1), (1, 1)), "init_conv")(x)
        for g, (features, strides) in enumerate(zip((16 * self.width, 32 * self.width, 64 * self.width), (1, 2, 2))):
            for b in range((self.depth - 4) // 6):
                x = _WideBlock(features, strides if b == 0 else 1, self.activation, name=f"layer_{g}_block_{b}")(
                    x, train)
        return _head(x, train, self.activation, 8, self.num_classes)


class _PreActBlock(_Block):
    @nn.compact
    def __call__(self, x, train):
        act = ACTIVATIONS[self.activation]
        out = act(_bn(train, "batchnorm_0")(x))
        projected = self.strides != 1 or x.shape[-1] != self.features
        shortcut = _conv(self.features, 3, self.strides, _same(self.strides), "shortcut")(x) if projected else x
        out = _conv(self.features, 3, self.strides, _same(self.strides), "conv_2d_1")(out)
        out = _conv(self.features, 3, 1, ((1, 1), (1, 1)), "conv_2d_2")(act(_bn(train, "batchnorm_1")(out)))
        return out + shortcut


class DMPreActResNet(_DMNet):
    """PreActResNet-18 (blocks 2, 2, 2, 2) or -34 (3, 4, 6, 3), widths 64 to 512."""

    blocks: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _Input(self.mean, self.std, self.padding, name="input")(x)
        x = _conv(64, 3, 1, ((1, 1), (1, 1)), "conv_2d")(x)
        for s, (n, features) in enumerate(zip(self.blocks, (64, 128, 256, 512))):
            for b in range(n):
                x = _PreActBlock(features, (1 if s == 0 else 2) if b == 0 else 1, self.activation,
                                 name=f"layer_{s}_block_{b}")(x, train)
        return _head(x, train, self.activation, 4, self.num_classes)


def _head(x, train, activation, pool, num_classes):
    """act(BN), average pooling over fixed `pool` x `pool` windows (PyTorch's avg_pool2d), linear."""
    x = ACTIVATIONS[activation](_bn(train, "batchnorm")(x))
    x = nn.avg_pool(x, (pool, pool), strides=(pool, pool), padding="VALID")
    return nn.Dense(num_classes, name="logits")(x.reshape(-1, x.shape[-1]))
