"""`heatmap`: the Fourier heat map (Yin et al. 2019, `hfcjax.heatmap`) of every rho: the
error rate when each single Fourier basis of L2 norm `eps` is added, centred, and its mean
inside / outside every radius of the paper's split (the heat map in the paper's language).
Bases go through in groups of `backend.heatmap_group` per compiled call (one compilation:
variables, eps and the group's basis ids are arguments).

Files: heatmap.npy (the first rho), heatmap_rho<rho>.npy (the others), heatmap.json (band
means) and heatmap.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import backend, data, heatmap as heatmap_lib, measure, plots, reports
from hfcjax.evaluators import common


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.eps = 4.0  # the L2 norm of each Fourier basis added (pixels in [0, 1])
    c.basis_chunk = 8  # bases per vectorised model pass inside one compiled call
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    common.check_number(c, "eps", 0.0, strict=True)
    common.check_int(c, "basis_chunk", 1)


@dataclasses.dataclass
class Result:
    """Per rho (variants with trained BatchNorm statistics): the [H, W] error map, zero
    frequency at (H // 2, W // 2); band_error[rho name][r<radius>] = {inside, outside}."""

    eps: float
    maps: Dict[float, np.ndarray]
    band_error: Dict[str, Dict[str, Dict[str, float]]]


class Evaluator(common.Evaluator):
    name = "heatmap"
    stage = 2

    def __init__(self, apply_fn, cfg, shared=common.Shared()):
        super().__init__(apply_fn, cfg, shared)
        chunk = cfg.basis_chunk
        self.counts = jax.jit(lambda variables, x_u8, y, m, e, ids, key: heatmap_lib.basis_counts(
            lambda z: apply_fn(variables, z), measure.to_unit(x_u8), y, e, ids, key=key, mask=m, basis_chunk=chunk))
        self.compiled = False

    def run(self, inputs: common.Inputs) -> Result:
        variants = [v for v in inputs.variants if not v.bn_reestimated]
        progress = common.GridProgress(len(variants), len(inputs.images), self.log, what="heat-map grid")
        maps = {v.rho: progress.kept_or_run(f"heatmap rho={v.rho:g}", inputs.partial,
                                            lambda v=v: self.one_map(v, inputs, progress)) for v in variants}
        bands = lambda m: {f"r{r:g}": dict(zip(("inside", "outside"),
                                               heatmap_lib.band_means(m, r, inclusive=inputs.inclusive)))
                           for r in inputs.radii}
        return Result(float(self.cfg.eps), maps, {f"rho={rho:g}": bands(m) for rho, m in maps.items()})

    def one_map(self, variant: common.ModelVariant, inputs: common.Inputs, progress: common.GridProgress):
        """[H, W] error rates (1 - accuracy) of one variant."""
        images, labels, batch = inputs.images, inputs.labels, self.shared.batch_size
        n, height, width = len(images), *images.shape[1:3]
        num_bases = len(heatmap_lib.basis_frequencies(height, width)[0])
        group = -(-backend.heatmap_group(num_bases) // self.cfg.basis_chunk) * self.cfg.basis_chunk
        ids = heatmap_lib.padded_ids(num_bases, group).reshape(-1, group)
        total, done = np.zeros(num_bases), 0
        if not self.compiled:
            self.log("  compiling the heat map (once for every rho; the first batch waits for it)")
            self.compiled = True
        for b, (x, y, m) in enumerate(data.batches(images, labels, batch, shuffle=False, drop_remainder=False)):
            key = jax.random.PRNGKey(self.shared.seed + b)
            counts = np.concatenate([np.asarray(self.counts(variant.variables, x, y, m, jnp.float32(self.cfg.eps),
                                                            jnp.asarray(g), key)) for g in ids])
            total += counts[:num_bases]
            progress.advance(min((b + 1) * batch, n) - done, f"heat map {variant.name}: batch {b + 1}")
            done = min((b + 1) * batch, n)
        return 1.0 - heatmap_lib.to_map(total, height, width) / n

    def write(self, result: Result, out_dir, inputs: common.Inputs) -> None:
        out_dir = Path(out_dir)
        for i, (rho, error) in enumerate(result.maps.items()):
            with reports.atomic_path(out_dir / ("heatmap.npy" if i == 0 else f"heatmap_rho{rho:g}.npy")) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, error)
        reports.write_json(out_dir / "heatmap.json", {"eps": result.eps, "band_error": result.band_error})
        plots.heatmaps({f"rho={rho:g}": m for rho, m in result.maps.items()}, out_dir / "heatmap.png",
                       eps=result.eps, radii=inputs.radii)

    def markdown(self, result: Result) -> str:
        radii = [key for key in next(iter(result.band_error.values()))]
        rows = [[name, *(v for r in radii for v in bands[r].values())] for name, bands in result.band_error.items()]
        header = ["heat map error", *(f"{side} {r}" for r in radii for side in ("inside", "outside"))]
        return reports.markdown_table(header, rows) + f"\n\nFourier heat map at L2 eps {result.eps:g}: heatmap.png"
