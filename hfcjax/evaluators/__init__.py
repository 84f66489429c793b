"""Evaluators built by name from ``config.evals`` (big_vision's shape).

The registry is this package: every module that defines an ``Evaluator`` class is one
analysis, its module name is its name and its config section, ``get_config()`` gives that
section's defaults (``enabled`` first) and ``validate(section)`` checks it. A new analysis
is one new module here; nothing else changes. Every section also has ``every_epochs``
(added here when the module leaves it out, 0): > 0 runs it during training every that many
epochs (`build_tracking`), for the per-batch evaluators that define `scalars`.

    evals = evaluators.default_config()           # config.evals
    evals.heatmap.enabled = True
    for evaluator in evaluators.build(evals, apply_fn, common.Shared(batch_size=200)):
        result = evaluator.run(inputs)            # structured rows / a report
        evaluator.write(result, out_dir, inputs)  # files named after it

`run_all` runs the enabled ones in their stages, fusing the per-batch evaluators into one
compiled pass per model variant.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any, Dict, List, Tuple

import ml_collections

from hfcjax.evaluators import common, fused
from hfcjax.errors import UserError

@functools.lru_cache(maxsize=None)
def names() -> Tuple[str, ...]:
    """Every evaluator's name, in the order an evaluation runs them."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if all(hasattr(module(info.name), a) for a in ("Evaluator", "get_config", "validate")):  # not the helpers
            found.append(info.name)
    return tuple(sorted(found, key=lambda n: (module(n).Evaluator.stage, n)))


def module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def section_defaults(name: str) -> ml_collections.ConfigDict:
    """``config.evals.NAME`` with its defaults: the module's `get_config()` plus `every_epochs`."""
    section = module(name).get_config()
    if "every_epochs" not in section:
        section.every_epochs = 0
    return section


def default_config() -> ml_collections.ConfigDict:
    """``config.evals``: every evaluator's section with its defaults."""
    evals = ml_collections.ConfigDict()
    for name in names():
        evals[name] = section_defaults(name)
    return evals


def validate(evals: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key ('config.evals.NAME.KEY ...') and what is allowed."""
    unknown = set(evals.keys()) - set(names())
    if unknown:
        raise UserError(f"config.evals has unknown evaluators {sorted(unknown)}; known: {list(names())}.")
    for name in evals.keys():
        section = evals[name]
        keys = set(section_defaults(name).keys())
        if set(section.keys()) != keys:
            raise UserError(f"config.evals.{name} must have exactly the keys {sorted(keys)} (start it from "
                             f"hfcjax.evaluators.{name}.get_config()), got {sorted(section.keys())}.")
        if not isinstance(section.enabled, bool):
            raise UserError(f"config.evals.{name}.enabled must be True or False, got {section.enabled!r}.")
        _check_every_epochs(name, section.every_epochs)
        try:
            module(name).validate(section)
        except ValueError as e:  # the section's checks name the key; say where it lives
            raise UserError(f"config.evals.{name}.{e}") from None


def _check_every_epochs(name: str, every) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UserError(f"config.evals.{name}.every_epochs must be an integer >= 0 (0 = not during training), "
                        f"got {every!r}.")
    cls = module(name).Evaluator
    if every and not (issubclass(cls, common.BatchEvaluator) and cls.tracks()):
        trackable = [n for n in names() if issubclass(module(n).Evaluator, common.BatchEvaluator)
                     and module(n).Evaluator.tracks()]
        raise UserError(f"config.evals.{name}.every_epochs: {name} runs after training only (per-epoch tracking "
                        f"takes {trackable}); set it to 0 and run python -m hfcjax.evaluate on the checkpoints.")


def build(evals: ml_collections.ConfigDict, apply_fn: common.ApplyFn,
          shared: common.Shared = common.Shared()) -> List[common.Evaluator]:
    """The enabled evaluators of `evals`, in the order an evaluation runs them."""
    validate(evals)
    return [module(name).Evaluator(apply_fn, evals[name], shared) for name in names()
            if name in evals and evals[name].enabled]


def build_tracking(evals: ml_collections.ConfigDict, apply_fn: common.ApplyFn,
                   shared: common.Shared = common.Shared()) -> List[common.BatchEvaluator]:
    """The evaluators a training run tracks (``every_epochs > 0``), enabled or not."""
    validate(evals)
    return [module(name).Evaluator(apply_fn, evals[name], shared) for name in names()
            if name in evals and evals[name].every_epochs > 0]


def run_all(evaluators: List[common.Evaluator], inputs: common.Inputs) -> Dict[str, Any]:
    """{name: result} of every evaluator, per-batch ones fused in one pass, stage by stage,
    after checking that the model's logits are finite on every image."""
    if evaluators:
        e = evaluators[0]
        common.check_finite(e.apply_fn, inputs.variables, inputs.images, e.shared.batch_size)
    results: Dict[str, Any] = {}
    for stage in sorted({e.stage for e in evaluators}):
        group = [e for e in evaluators if e.stage == stage]
        batched = [e for e in group if isinstance(e, common.BatchEvaluator)]
        if batched:
            results.update(fused.run_fused(batched, inputs))
        for e in group:
            if not isinstance(e, common.BatchEvaluator):
                results[e.name] = e.run(inputs)
    return {e.name: results[e.name] for e in evaluators}
