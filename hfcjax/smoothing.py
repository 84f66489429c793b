"""Kernel smoothing (Eq. 3, Section 6.3) as a pure transform of a Flax parameter tree.

    w[i, j] <- w[i, j] + rho * sum of its 8 spatial neighbours

with out-of-border neighbours duplicated from the border (edge replicate) and no
renormalisation, on every input/output channel of an HWIO kernel.
"""

from __future__ import annotations

import re
from typing import Any, List, Sequence, Tuple

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hfcjax import frequency
from hfcjax.models import FIRST_CONV
from hfcjax.errors import UserError

DEFAULT_LAYERS = (rf"^{FIRST_CONV}/kernel$",)


def _check_rho(rho) -> None:
    """A concrete rho must be finite and >= 0 (a traced one is not checked)."""
    if not frequency.is_traced(rho):
        value = np.asarray(rho, np.float64)
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise UserError(f"rho must be a finite number >= 0 (Eq. 3's smoothing strength), got {rho!r}.")


def _patterns(layers) -> Sequence[str]:
    """One regex given as a string means that regex, not a list of characters."""
    return (layers,) if isinstance(layers, str) else tuple(layers)


def smooth_kernel(kernel, rho):
    """Eq. 3 on an HWIO kernel of any spatial size; `rho` may be traced (a concrete one must
    be finite and >= 0)."""
    _check_rho(rho)
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 4:
        raise UserError(f"smooth_kernel expects an HWIO kernel (4 dims), got shape {kernel.shape}.")
    h, w = kernel.shape[:2]
    padded = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)), mode="edge")
    neighbours = sum(padded[1 + di: 1 + di + h, 1 + dj: 1 + dj + w]
                     for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0))
    return kernel + rho * neighbours


def path_string(path: Tuple[str, ...]) -> str:
    """The form the layer regexes are matched against: 'stage1_block1/Conv_0/kernel'."""
    return "/".join(str(p) for p in path)


def selected_paths(params, layers: Sequence[str] = DEFAULT_LAYERS) -> List[Tuple[str, ...]]:
    """Paths (tuples of keys) of the 4-D kernels whose `path_string` matches any regex in
    `layers` (a regex or a sequence of them), in the tree's order; a ValueError lists the
    model's kernels when none does."""
    layers = _patterns(layers)
    flat = traverse_util.flatten_dict(_unfreeze(params))
    try:
        patterns = [re.compile(p) for p in layers]
    except re.error as e:
        raise UserError(f"bad regex in config.evaluation.layers ({e}): {list(layers)}.") from None
    found = [k for k, v in flat.items()
             if getattr(v, "ndim", 0) == 4 and any(p.search(path_string(k)) for p in patterns)]
    if not found:
        convs = [path_string(k) for k, v in flat.items() if getattr(v, "ndim", 0) == 4]
        hint = (f"; select them with config.evaluation.layers, e.g. --config.evaluation.layers='(\"^{convs[0]}$\",)'"
                if convs else "; this model has no 4-D convolution kernel to smooth: use rho 0 only")
        raise UserError(f"no convolution kernel matches {list(layers)}; kernels in this model: {convs[:8]}"
                        f"{' ...' if len(convs) > 8 else ''}{hint}")
    return found


def first_kernel(params, layers: Sequence[str] = DEFAULT_LAYERS):
    """The first kernel `layers` selects (what Figure 7 draws and `roughness` scores)."""
    return traverse_util.flatten_dict(_unfreeze(params))[selected_paths(params, layers)[0]]


def _unfreeze(tree):
    return tree.unfreeze() if hasattr(tree, "unfreeze") else tree


def smooth_params(params, rho, *, layers: Sequence[str] = DEFAULT_LAYERS) -> Any:
    """A copy of `params` with Eq. 3 applied to the kernels selected by `layers` (regexes on
    paths like 'stem/kernel'); every other leaf is returned untouched."""
    _check_rho(rho)
    chosen = set(selected_paths(params, layers))
    flat = traverse_util.flatten_dict(_unfreeze(params))
    out = {k: smooth_kernel(v, rho) if k in chosen else v for k, v in flat.items()}
    return traverse_util.unflatten_dict(out)


def roughness(kernel) -> jnp.ndarray:
    """Mean squared difference between horizontally and vertically adjacent weights,
    relative to the kernel's mean square: 0 for a constant kernel, scale-free."""
    kernel = jnp.asarray(kernel, jnp.float32)
    dy = jnp.mean(jnp.square(kernel[1:] - kernel[:-1]))
    dx = jnp.mean(jnp.square(kernel[:, 1:] - kernel[:, :-1]))
    return (dx + dy) / (2 * jnp.mean(jnp.square(kernel)) + 1e-12)
