"""The fused per-batch pass: every `common.BatchEvaluator` of an evaluation compiled into one
call per batch, summed over the batches, one row per model variant (resumable through
`Inputs.partial`, progress with the ETA of the whole grid)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import backend, data, measure, sharding
from hfcjax.evaluators.common import (BatchContext, BatchEvaluator, GridProgress, Inputs, ModelVariant,
                                      to_json)


def run_fused(evaluators: Sequence[BatchEvaluator], inputs: Inputs) -> Dict[str, List[Any]]:
    """{name: [row per variant]} of `evaluators` run together: one compiled call per batch,
    every variant's rows kept in `inputs.partial` as they finish (and read back from it)."""
    return FusedPass(evaluators).run(inputs)


_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))  # one call, not one per array (48 on a ResNet-18)


class FusedPass:
    """`evaluators` compiled into one call per batch; keep the object to run them again
    (every epoch of a training run) without compiling again."""

    def __init__(self, evaluators: Sequence[BatchEvaluator], progress: bool = True):
        self.evaluators = sorted(evaluators, key=lambda e: e.reads_attacks)  # producers of attacks first
        self.shared, self.progress = self.evaluators[0].shared, progress
        self.mesh = sharding.make_mesh()
        self.batch_size = -(-self.shared.batch_size // self.mesh.size) * self.mesh.size
        repl, self.batch_sh = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
        apply_fn = self.evaluators[0].apply_fn

        def sums(variables, images_u8, labels, mask, key, args, inclusive):
            ctx = BatchContext(lambda z: apply_fn(variables, z), measure.to_unit(images_u8), labels, mask, key,
                               inclusive)
            return {e.name: e.batch_sums(ctx, args[e.name]) for e in self.evaluators}

        self.sums = jax.jit(sums, in_shardings=(repl, self.batch_sh, self.batch_sh, self.batch_sh, repl, repl),
                            out_shardings=repl, static_argnums=6, compiler_options=backend.eval_compiler_options())
        self.compiled = False

    def run(self, inputs: Inputs) -> Dict[str, List[Any]]:
        log = self.shared.log if self.progress else (lambda message: None)
        progress = GridProgress(len(inputs.variants), len(inputs.images), log)
        out: Dict[str, List[Any]] = {e.name: [] for e in self.evaluators}
        args = None  # the evaluators' arguments: the same for every variant, made once a row has to run
        for variant in inputs.variants:
            def rows():
                nonlocal args
                if args is None:
                    args = {e.name: e.args(inputs) for e in self.evaluators}
                return {name: to_json(row) for name, row in self.rows(variant, inputs, args, progress).items()}

            kept = progress.kept_or_run(variant.name, inputs.partial, rows)
            for e in self.evaluators:
                out[e.name].append(type(e).Row(**kept[e.name]))
        return {e.name: out[e.name] for e in self.evaluators}

    def rows(self, variant: ModelVariant, inputs: Inputs, args, progress: GridProgress) -> Dict[str, Any]:
        """One variant's rows. One batch is in flight while the host prepares the next; each
        batch's progress line follows its sums."""
        n, start, total, pending = len(inputs.images), time.time(), None, None
        if not self.compiled:
            progress.log("  compiling the attacks (once for every row; the first batch waits for it)")
            self.compiled = True
        for b, (x, y, m) in enumerate(data.batches(inputs.images, inputs.labels, self.batch_size, shuffle=False,
                                                   drop_remainder=False)):
            x, y, m = sharding.global_batch(self.batch_sh, x, y, m)
            counts = self.sums(variant.variables, x, y, m, jax.random.PRNGKey(self.shared.seed + b), args,
                               bool(inputs.inclusive))
            total = counts if total is None else _tree_add(total, counts)
            _done(pending, progress)
            pending = (total, min((b + 1) * self.batch_size, n) - min(b * self.batch_size, n),
                       f"{variant.name}: batch {b + 1}")
        _done(pending, progress)
        total = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(total))
        seconds = round(time.time() - start, 2)
        return {e.name: e.row(variant, total[e.name], n, seconds) for e in self.evaluators}


def _done(pending, progress: GridProgress) -> None:
    """Waits for the batch in flight, `(running total, images, label)`, and says it is done."""
    if pending is not None:
        jax.block_until_ready(pending[0])
        progress.advance(*pending[1:])
