"""`autoattack`: AutoAttack (Croce & Hein 2020), the robust accuracy the field compares.

A cascade: each attack runs only on the images every earlier attack left correctly
classified, and an image counts as broken when an attack finds a point within `eps` that
the model misclassifies (checked again on the returned point, as AutoAttack does).
``version``: standard = APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes), Square
(5,000 queries), each with one run, as AutoAttack's standard version, in L-inf or L2; rand =
APGD-CE and APGD-DLR with every gradient averaged over ``eot_draws`` (20) passes of a
randomized model (`attacks.RandomizedApply`, e.g. `external.Randomized`), the final check on
a fresh draw, as AutoAttack's rand version; custom = the ``attacks`` given, in that order,
with AutoAttack's names (APGD's with EOT on a randomized model). Clean accuracy, and every
attack of the standard version, see one fixed draw of a randomized model.
Per model variant: clean accuracy, the robust accuracy after each attack with its time, and
the final robust accuracy.

Files: autoattack.json (``clean_accuracy``, ``robust_accuracy``, ``per_attack`` of the
model as given, and every variant's row) and autoattack.md.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Dict, List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import attacks, backend, data, measure, reports
from hfcjax.evaluators import common
from hfcjax.errors import UserError

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # AutoAttack's names
SQUARE_P_INIT = 0.8  # AutoAttack's Square: windows over 80% of the pixels at first, its schedule not rescaled
VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr"), "custom": ()}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.norm = "linf"  # linf | l2
    c.eps = 8 / 255  # the threat model's radius, pixels in [0, 1] (RobustBench: 8/255 L-inf, 0.5 L2)
    c.version = "standard"  # standard | rand (randomized models: EOT) | custom (then `attacks` says which, in order)
    c.attacks = ()  # with version=custom: names from ATTACKS, e.g. ('apgd-ce', 'square')
    c.apgd_steps = 100  # iterations of APGD-CE / APGD-DLR / APGD-T (each target)
    c.fab_steps = 100  # iterations of FAB / FAB-T (each target)
    c.targets = 9  # target classes of APGD-T and FAB-T (at most classes - 1)
    c.square_queries = 5000
    c.eot_draws = 20  # passes per APGD gradient on a randomized model, versions rand and custom (AutoAttack: 20)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    if c.norm not in attacks.NORMS:
        raise UserError(f"norm {c.norm!r} is unknown; choose one of {attacks.NORMS}.")
    common.check_number(c, "eps", 0.0, strict=True)
    if c.version not in VERSIONS:
        raise UserError(f"version {c.version!r} is unknown; choose one of {tuple(VERSIONS)}.")
    names = list(c.attacks)
    if c.version == "custom" and not names:
        raise UserError("attacks: version 'custom' needs at least one attack, e.g. ('apgd-ce', 'apgd-t').")
    if c.version != "custom" and names:
        raise UserError(f"attacks: the {c.version} version fixes its attacks; set version='custom' to choose them.")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise UserError(f"attacks: {unknown} unknown; AutoAttack's names are {list(ATTACKS)}.")
    for key in ("apgd_steps", "fab_steps", "targets", "square_queries", "eot_draws"):
        common.check_int(c, key, 1)


def attack_list(c) -> List[str]:
    return list(c.attacks) if c.version == "custom" else list(VERSIONS[c.version])


@dataclasses.dataclass(frozen=True)
class Row:
    """One model variant: clean accuracy, after each attack of the cascade its robust
    accuracy and seconds (``per_attack``: [{"attack", "robust_accuracy", "seconds"}]), and
    the final robust accuracy."""

    name: str
    rho: float
    bn_reestimated: bool
    norm: str
    eps: float
    clean: float
    robust: float
    per_attack: List[Dict]


class Evaluator(common.Evaluator):
    name = "autoattack"
    stage = 2

    def __init__(self, apply_fn, cfg, shared=common.Shared()):
        super().__init__(apply_fn, cfg, shared)
        self.attacks = attack_list(cfg)
        self.randomized = isinstance(apply_fn, attacks.RandomizedApply)
        self.eot = self.randomized and cfg.version != "standard" and cfg.eot_draws > 1
        self._compiled: Dict[str, object] = {}

    def attack_fn(self, name: str):
        """Jitted (variables, images in [0, 1], labels, key) -> broken [B] of attack `name`."""
        if name in self._compiled:
            return self._compiled[name]
        c, eps = self.cfg, float(self.cfg.eps)

        def run(variables, x, y, key):
            fn = lambda z: self.apply_fn(variables, z)
            eot = dict(eot=attacks.Eot(c.eot_draws, jax.random.fold_in(key, 1))) if self.eot else {}
            model = (lambda z, k: self.apply_fn(variables, z, k)) if self.eot else fn
            start = jax.random.fold_in(key, 3)  # APGD starts at random in the ball, as AutoAttack's
            if name == "apgd-ce" or name == "apgd-dlr":
                adv = attacks.apgd_run(model, x, y, eps, steps=c.apgd_steps, loss=name[5:], norm=c.norm, key=start,
                                       **eot).adv
            elif name == "apgd-t":
                adv = attacks.apgd_targeted(model, x, y, eps, targets=c.targets, steps=c.apgd_steps, norm=c.norm,
                                            key=start, **eot).adv
            elif name == "fab":
                adv = attacks.fab(fn, x, y, eps, norm=c.norm, steps=c.fab_steps).adv
            elif name == "fab-t":
                adv = attacks.fab_targeted(fn, x, y, eps, targets=c.targets, norm=c.norm, steps=c.fab_steps).adv
            else:
                adv = attacks.square(fn, x, y, eps, key=key, queries=c.square_queries, norm=c.norm,
                                     p_init=SQUARE_P_INIT, rescale_schedule=False)
            delta = (adv - x).reshape(x.shape[0], -1)
            size = jnp.max(jnp.abs(delta), -1) if c.norm == "linf" else jnp.sqrt(jnp.sum(delta ** 2, -1))
            inside = (size <= eps * (1 + 1e-5)) & (jnp.min(adv) >= 0) & (jnp.max(adv) <= 1)
            final = model(adv, jax.random.fold_in(key, 2)) if self.eot else fn(adv)  # a fresh draw, as AutoAttack
            return inside & (jnp.argmax(final, -1) != y)  # AutoAttack's final check, on the returned point

        self._compiled[name] = jax.jit(lambda v, x, y, key: run(v, measure.to_unit(x), y, key),
                                       compiler_options=backend.eval_compiler_options())
        return self._compiled[name]

    def clean_correct(self, variables, images, labels) -> np.ndarray:
        if "predict" not in self._compiled:
            self._compiled["predict"] = jax.jit(lambda v, x: jnp.argmax(self.apply_fn(v, measure.to_unit(x)), -1))
        predict = self._compiled["predict"]
        out = [np.asarray(predict(variables, x))[m > 0] for x, _, m in
               data.batches(images, labels, self.shared.batch_size, shuffle=False, drop_remainder=False)]
        return np.concatenate(out) == labels

    def cascade(self, variant: common.ModelVariant, inputs: common.Inputs, progress: common.GridProgress) -> Row:
        images, labels, n = inputs.images, np.asarray(inputs.labels), len(inputs.images)
        robust = self.clean_correct(variant.variables, images, labels)
        clean, steps = float(robust.mean()), []
        for a, name in enumerate(self.attacks):
            start, todo = time.time(), np.flatnonzero(robust)
            broken = []
            for b, (x, y, m) in enumerate(data.batches(images[todo], labels[todo], self.shared.batch_size,
                                                       shuffle=False, drop_remainder=False)):
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.shared.seed), a), b)
                broken.append(np.asarray(self.attack_fn(name)(variant.variables, x, y, key))[m > 0])
            if len(todo):
                robust[todo[np.concatenate(broken)]] = False
            steps.append({"attack": name, "robust_accuracy": float(robust.mean()),
                          "seconds": round(time.time() - start, 2)})
            progress.advance(n, f"{variant.name}: {name} on {len(todo)} images -> robust {robust.mean():.3f}")
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated, norm=self.cfg.norm,
                   eps=float(self.cfg.eps), clean=clean, robust=float(robust.mean()), per_attack=steps)

    def run(self, inputs: common.Inputs) -> List[Row]:
        if self.cfg.version == "rand" and not self.randomized:
            self.log("  warning [autoattack]: version 'rand' on a deterministic model: its EOT repeats one pass; "
                     "the standard version is the one to compare")
        progress = common.GridProgress(len(inputs.variants) * len(self.attacks), len(inputs.images), self.log,
                                       what="AutoAttack cascade")
        rows = []
        for variant in inputs.variants:
            kept = progress.kept_or_run(f"autoattack {variant.name}", inputs.partial, functools.partial(
                lambda v: common.to_json(self.cascade(v, inputs, progress)), variant))
            rows.append(Row(**kept))
        return rows

    def columns(self, rows: List[Row]) -> List[reports.Column]:
        names = [s["attack"] for s in rows[0].per_attack] if rows else []
        after = lambda i: (lambda r: r.per_attack[i]["robust_accuracy"])
        return (common.variant_columns() + [reports.field("clean", "clean")]
                + [reports.Column(f"after {a}", f"after_{a}", after(i)) for i, a in enumerate(names)]
                + [reports.field("robust", f"AutoAttack {self.cfg.norm} {self.cfg.eps:.4g}")])

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        first = rows[0]
        value = {"num_examples": len(inputs.images), "norm": self.cfg.norm, "eps": float(self.cfg.eps),
                 "version": self.cfg.version, "attacks": self.attacks, "clean_accuracy": first.clean,
                 "robust_accuracy": first.robust, "per_attack": first.per_attack,
                 "rows": [common.to_json(r) for r in rows]}
        reports.write_table(Path(out_dir), self.name, rows, self.columns(rows), value)
