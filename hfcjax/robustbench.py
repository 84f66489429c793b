"""RobustBench leaderboard entries whose architectures hfcjax reads (`torch_weights`), with
what the state_dict does not say (architecture, activation, input padding, normalisation) and
the leaderboard's own clean and AutoAttack accuracies, so a report can print them beside
hfcjax's. The numbers and architectures are RobustBench's (``model_info/cifar10/...json``
and ``model_zoo/cifar10.py``); the user brings the ``.pt`` file.

    entry = robustbench.lookup("Gowal2020Uncovering_70_16")
    module, variables = torch_weights.load(path, entry.arch, **entry.options())
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from hfcjax.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One leaderboard model: its threat model (`norm`, `eps`), how to read its weights
    (`arch`, `activation`, `padding`; `mean`/`std` are buffers inside the DeepMind models),
    and the leaderboard's accuracies in percent."""

    name: str
    norm: str
    eps: float
    arch: str
    activation: str
    clean: float
    autoattack: float
    padding: int = 0
    mean: Tuple[float, ...] = CIFAR10_MEAN
    std: Tuple[float, ...] = CIFAR10_STD

    def options(self) -> Dict:
        """The keyword arguments of `torch_weights.load` / `convert` for this model."""
        return {"activation": self.activation, "padding": self.padding}


def _linf(name, arch, clean, autoattack, activation="swish"):
    return Entry(name, "linf", 8 / 255, arch, activation, clean, autoattack)


# CIFAR-10, L-inf, eps 8/255: DeepMind-architecture entries (DMWideResNet / DMPreActResNet, swish).
TABLE: Dict[str, Entry] = {e.name: e for e in (
    _linf("Gowal2020Uncovering_70_16", "dm_wrn", 85.29, 57.14),
    _linf("Gowal2020Uncovering_28_10_extra", "dm_wrn", 89.48, 62.76),
    _linf("Rebuffi2021Fixing_70_16_cutmix_extra", "dm_wrn", 92.23, 66.58),
    _linf("Gowal2021Improving_70_16_ddpm_100m", "dm_wrn", 88.74, 66.11),
    _linf("Rebuffi2021Fixing_R18_ddpm", "dm_preact_resnet18", 83.53, 56.66),
)}


def lookup(name: str) -> Entry:
    if name not in TABLE:
        raise UserError(f"--robustbench_model {name!r} is not in hfcjax's table; known: {sorted(TABLE)} (others: "
                        "--torch_weights with --arch, --activation, --input_padding).")
    return TABLE[name]
