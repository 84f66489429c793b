"""The paper's vanilla set-up (Section 4.2): ResNet-18 on CIFAR-10, Adam 1e-4, batch 100,
100 epochs, Xavier init, pixels in [0, 1], no BatchNorm. Every key is documented in
hfcjax/config.py; override any with --config.KEY=VALUE."""

from hfcjax import config as base


def get_config():
    return base.default()
