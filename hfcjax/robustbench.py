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
from typing import Dict, Optional, Tuple

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


THREAT_EPS = {"linf": 8 / 255, "l2": 0.5}  # RobustBench's CIFAR-10 threat models


def _dm(norm, name, arch, clean, autoattack):
    """A DeepMind-architecture entry (swish) at the leaderboard's threat model `norm`."""
    return Entry(name, norm, THREAT_EPS[norm], arch, "swish", clean, autoattack)


# CIFAR-10 DeepMind-architecture entries (DMWideResNet / DMPreActResNet, swish): L-inf at eps 8/255,
# and the seven of the L2 leaderboard at eps 0.5 (model_info/cifar10/L2/*.json). A name may stand on
# both leaderboards, for different weights (Rebuffi2021Fixing_70_16_cutmix_extra).
ENTRIES: Tuple[Entry, ...] = (
    _dm("linf", "Gowal2020Uncovering_70_16", "dm_wrn", 85.29, 57.14),
    _dm("linf", "Gowal2020Uncovering_28_10_extra", "dm_wrn", 89.48, 62.76),
    _dm("linf", "Rebuffi2021Fixing_70_16_cutmix_extra", "dm_wrn", 92.23, 66.58),
    _dm("linf", "Gowal2021Improving_70_16_ddpm_100m", "dm_wrn", 88.74, 66.11),
    _dm("linf", "Rebuffi2021Fixing_R18_ddpm", "dm_preact_resnet18", 83.53, 56.66),
    _dm("l2", "Gowal2020Uncovering", "dm_wrn", 90.90, 74.50),
    _dm("l2", "Gowal2020Uncovering_extra", "dm_wrn", 94.74, 80.53),
    _dm("l2", "Rebuffi2021Fixing_70_16_cutmix_ddpm", "dm_wrn", 92.41, 80.38),
    _dm("l2", "Rebuffi2021Fixing_28_10_cutmix_ddpm", "dm_wrn", 91.79, 78.69),
    _dm("l2", "Rebuffi2021Fixing_70_16_cutmix_extra", "dm_wrn", 95.74, 82.32),
    _dm("l2", "Rebuffi2021Fixing_R18_cutmix_ddpm", "dm_preact_resnet18", 90.33, 75.86),
    _dm("l2", "Rade2021Helper_R18_ddpm", "dm_preact_resnet18", 90.57, 76.15),
)


def lookup(name: str, norm: Optional[str] = None) -> Entry:
    """The entry `name` (of the `norm` leaderboard, linf or l2, where the name is on both)."""
    found = [e for e in ENTRIES if e.name == name]
    if not found:
        known = sorted({e.name for e in ENTRIES})
        raise UserError(f"--robustbench_model {name!r} is not in hfcjax's table; known: {known} (others: "
                        "--torch_weights with --arch, --activation, --input_padding).")
    chosen = [e for e in found if norm is None or e.norm == norm]
    if len(chosen) != 1:
        norms = [e.norm for e in found]
        raise UserError(f"--robustbench_model {name!r} is on the {' and '.join(norms)} leaderboard{'s' * (len(norms) > 1)}"
                        + ("" if norm is None else f", not {norm}") + ": say which with "
                        f"--config.evals.autoattack.norm={'|'.join(norms)}.")
    return chosen[0]
