"""`features`: how do the feature maps' spectra change with depth? Park & Kim 2022 (Fig. 2):
the relative log amplitude of Fourier-transformed feature maps. Every Flax module's output
that is a feature map ``[B, H, W, C]`` (H, W >= `min_size`) is caught as the model runs
(`flax.linen.intercept_methods`, so any Flax model: a run's, a ``(module, variables)`` pair,
converted PyTorch weights); per map, the log amplitude ``log(|F| + 1e-8)`` of each channel's
2-D Fourier transform F is averaged over channels and taken relative to the zero frequency,
along a `profile`:

- ``diagonal`` (the default; Park & Kim's own measure): F on the spectrum's diagonal, the
  frequencies (j, j) for j = 0 .. H / 2 on a square map, from the zero frequency to (pi, pi).
  Computed directly, not by a full transform (`diagonal_log_amplitude`). A map of H != W
  goes along (round(j H / 2 / (J-1)), round(j W / 2 / (J-1))), J = min(H, W) / 2 + 1 points. Park & Kim's code stops one step short of pi; here the last
  point is pi.
- ``rings``: the mean over each ring of equal frequency of the whole 2-D spectrum (an FFT of
  every channel), ring k at k / (H / 2) pi: isotropic, and about the cost of the forward
  pass again on a CPU (docs/benchmarks.md).

`high`: the value at pi, the number plotted against depth. Means over the images; one row per
model variant. A plain function has no modules to look into: use a Flax model.

Files: features.{json,csv,md} and features.png (the profiles by depth; `high` against depth
for every rho).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import frequency, plots, reports
from hfcjax.evaluators import common
from hfcjax.errors import UserError


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.min_size = 4  # smallest feature-map side analysed (a 2x2 map has no spectrum to speak of)
    c.modules = ".*"  # regex on module paths ('Conv_0', 'layer1/BasicBlock_0', ...); only matches are kept
    c.profile = "diagonal"  # or "rings" (module docstring)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    import re

    common.check_int(c, "min_size", 2)
    if c.profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {c.profile!r}.")
    try:
        re.compile(c.modules)
    except (re.error, TypeError) as e:
        raise ValueError(f"modules must be a regular expression, got {c.modules!r} ({e}).") from None


def capture(logits_fn, x, min_size: int, pattern: str) -> Tuple[jnp.ndarray, List[Tuple[str, jnp.ndarray]]]:
    """(logits, [(module path, feature map)]) of one call, in the order the modules return."""
    import re

    maps, seen = [], {}
    keep = re.compile(pattern)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if (context.method_name == "__call__" and isinstance(out, jax.Array) and out.ndim == 4
                and min(out.shape[1:3]) >= min_size and out.shape[0] == x.shape[0]):
            path = "/".join(context.module.path) or type(context.module).__name__
            seen[path] = seen.get(path, 0) + 1
            name = path if seen[path] == 1 else f"{path}#{seen[path]}"
            if keep.search(name):
                maps.append((name, out))
        return out

    with nn.intercept_methods(interceptor):
        logits = logits_fn(x)
    return logits, maps


def ring_log_amplitude(feature_map) -> jnp.ndarray:
    """``[B, R]``: per image, the channel-mean log amplitude per ring minus its value at the
    zero frequency (``profile="rings"``)."""
    amplitude = jnp.abs(jnp.fft.rfft2(feature_map.astype(jnp.float32), axes=(1, 2)))  # half: real maps
    profile = frequency.ring_mean(jnp.mean(jnp.log(amplitude + 1e-8), axis=-1), width=feature_map.shape[2])
    return profile - profile[:, :1]


def diagonal_frequencies(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """(u, v): the J = min(H, W) // 2 + 1 integer frequencies of the diagonal profile, from (0, 0)
    to (H // 2, W // 2); u == v == arange(J) on a square map."""
    last = min(height, width) // 2
    steps = np.arange(last + 1) / max(last, 1)
    return np.rint(steps * (height // 2)).astype(int), np.rint(steps * (width // 2)).astype(int)


def diagonal_log_amplitude(feature_map) -> jnp.ndarray:
    """``[B, J]``: per image, the channel-mean log amplitude at the diagonal frequencies
    (`diagonal_frequencies`) minus its value at the zero frequency (``profile="diagonal"``):
    the Fourier transform at those J frequencies only. On a square map F(k, k) is the 1-D
    transform of the sums along the wrapped anti-diagonals m + n = t (mod N), which a skew
    (two reshapes) lines up; otherwise one matrix product with the J cosines and sines."""
    b, height, width, channels = feature_map.shape
    x = feature_map.astype(jnp.float32)
    u, v = diagonal_frequencies(height, width)
    if height == width:
        n = height  # row m of the skewed [N, 2N - 1] view from column N - 1 on: x[m, (t - 1 - m) mod N]
        skewed = jnp.concatenate([x, x], axis=2).reshape(b, 2 * n * n, channels)[:, :n * (2 * n - 1)]
        x = jnp.sum(skewed.reshape(b, n, 2 * n - 1, channels)[:, :, n - 1:], axis=1)  # shifted by one: |F| the same
        phase = 2 * np.pi * np.outer(np.arange(n), u / n)  # [N, J]
    else:
        x = x.reshape(b, height * width, channels)
        phase = 2 * np.pi * (np.outer(np.arange(height), u / height)[:, None, :]
                             + np.outer(np.arange(width), v / width)[None, :, :]).reshape(height * width, len(u))
    basis = jnp.asarray(np.concatenate([np.cos(phase), np.sin(phase)], axis=-1), jnp.float32)
    z = jnp.einsum("bpc,pk->bkc", x, basis, precision=jax.lax.Precision.HIGHEST)
    amplitude = jnp.sqrt(jnp.square(z[:, :len(u)]) + jnp.square(z[:, len(u):]))  # [B, J, C]
    profile = jnp.mean(jnp.log(amplitude + 1e-8), axis=-1)
    return profile - profile[:, :1]


PROFILES = {"diagonal": diagonal_log_amplitude, "rings": ring_log_amplitude}


@dataclasses.dataclass(frozen=True)
class Row:
    """Per captured feature map (`layers`, in depth order, with `shapes` H x W x C): the mean
    relative log amplitude along the `profile` (`profiles`: point k at k / (min(H, W) / 2) pi,
    along the diagonal or per ring) and at pi (`high`)."""

    name: str
    rho: float
    bn_reestimated: bool
    layers: List[str]
    shapes: List[List[int]]
    profiles: List[List[float]]
    high: List[float]
    profile: str = "rings"  # rows written before the diagonal existed were rings


class Evaluator(common.BatchEvaluator):
    name = "features"
    caption = "Relative log amplitude at pi of each feature map (Park & Kim 2022; by depth)"
    figure_note = "Profiles by depth"
    Row = Row
    _traced = None  # the key of the inputs the layers below were traced for

    def args(self, inputs: common.Inputs):
        """{} after finding the maps' names and shapes by tracing one image (nothing runs); the
        trace is kept for inputs of the same image shape and variables' structure and shapes
        (every model variant, every epoch): a ResNet-18's costs a tenth of four batches."""
        key = (inputs.images.shape[1:], jax.tree.structure(inputs.variables),
               tuple((v.shape, v.dtype) for v in jax.tree.leaves(inputs.variables)))
        if self._traced != key:
            self._trace(inputs)
            self._traced = key
        return {}

    def _trace(self, inputs: common.Inputs) -> None:
        found = []  # (name, shape) of every map

        def trace(variables, z):
            logits, maps = self._capture(lambda y: self.apply_fn(variables, y), z)
            found.extend((name, m.shape) for name, m in maps)
            return logits

        jax.eval_shape(trace, inputs.variables, jax.ShapeDtypeStruct((1, *inputs.images.shape[1:]), jnp.float32))
        names = [n for n, _ in found]
        if not names:
            raise UserError("config.evals.features found no feature maps: the model is a plain function (use a Flax "
                            "model: a run's workdir, a (module, variables) pair or --torch_weights) or no module's "
                            f"output is [N, H, W, C] with H, W >= min_size={self.cfg.min_size} matching "
                            f"modules={self.cfg.modules!r}.")
        self._layers, self._shapes = names, [list(s[1:]) for _, s in found]

    def _capture(self, logits_fn, x):
        return capture(logits_fn, x, int(self.cfg.min_size), self.cfg.modules)

    def batch_sums(self, ctx: common.BatchContext, args):
        _, maps = self._capture(ctx.logits_fn, ctx.x)
        spectrum = PROFILES[self.cfg.profile]
        return {name: jnp.sum(spectrum(m) * ctx.mask[:, None], axis=0) for name, m in maps}

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        profiles = [(np.asarray(sums[name]) / n).tolist() for name in self._layers]
        high = [p[min(shape[0], shape[1]) // 2] for p, shape in zip(profiles, self._shapes)]
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated, layers=self._layers,
                   shapes=self._shapes, profiles=profiles, high=high, profile=self.cfg.profile)

    def columns(self, rows: List[Row]) -> List[reports.Column]:
        """Every map in the CSV; at most 8, evenly by depth, in the Markdown."""
        layers = rows[0].layers if rows else []
        shown = set(np.linspace(0, len(layers) - 1, min(len(layers), 8)).round().astype(int).tolist())
        return common.variant_columns() + [reports.field("high", name if i in shown else None, f"high_{name}", index=i)
                                           for i, name in enumerate(layers)]

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        common.write_rows(self, rows, out_dir, inputs, figure)


def figure(rows: Sequence[Dict], path) -> str:
    """Left: the first row's (the model as given) relative log amplitude of every feature map
    against frequency (0 to pi), coloured by depth (Park & Kim 2022, Fig. 2a). Right: the
    value at pi against depth, one line per row (rho)."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(11, 3.4))
    if rows:
        first = rows[0]
        depth = plots.palette(len(first["layers"]), "viridis", high=1.0)
        for c, profile, shape in zip(depth, first["profiles"], first["shapes"]):
            half = min(shape[0], shape[1]) // 2
            axes[0].plot(np.arange(half + 1) / half, profile[:half + 1], color=c, lw=1)
        along = "along the diagonal, 0 to (pi, pi)" if first.get("profile") == "diagonal" else "ring means"
        axes[0].set_title(f"{first['name']}: feature maps ({along}), shallow (purple) to deep (yellow)", fontsize=9)
    colours = plots.palette(len(rows))
    for c, row in zip(colours, rows):
        axes[1].plot(np.arange(len(row["high"])), row["high"], "o-", color=c, ms=3, label=row["name"])
    if rows and len(rows[0]["layers"]) <= 12:
        axes[1].set_xticks(range(len(rows[0]["layers"])), rows[0]["layers"], rotation=60, fontsize=6)
    axes[0].set_xlabel("frequency (units of pi)", fontsize=8)
    axes[0].set_ylabel("relative log amplitude", fontsize=8)
    axes[1].set_xlabel("depth (feature maps in call order)", fontsize=8)
    axes[1].set_ylabel("relative log amplitude at pi", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    return plots.save(fig, path)
