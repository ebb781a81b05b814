"""Which weights each part uses: the plain mean, the pooled weights, or the pooled weights moved toward the part's own.

The hierarchy (docs/ensembles.md, "Pooling across parts"):

1. **pooled** role weights from every fitting study (:mod:`.pooling`), judged
   once on all studies: patient-grouped folds over all parts, each fold refits
   the pooled weights (member selection included) on the other folds; kept
   only when the out-of-fold log loss beats the plain mean's by more than
   noise (the paired patient bootstrap of :mod:`.significance`). Kept: each
   part's *prior* is the pooled weights spread over its members; rejected: the
   plain mean.
2. **part**: ``w_p = lam_p * w_own + (1 - lam_p) * prior_p``, where ``w_own``
   is fitted on the part alone and ``lam_p = min(tau2 / (tau2 + v_p), n/(n+K))``
   (empirical Bayes: ``v_p`` the bootstrap variance of ``w_own``, ``tau2`` how
   far parts' own weights lie from their priors beyond that noise). Kept only
   when its out-of-fold log loss on the part beats the prior's by more than
   noise; else the part uses its prior.
3. **harm check**: a part whose chosen weights are worse than the plain mean on
   its own studies by more than noise (out-of-fold log loss) uses the plain mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibration import IDENTITY, Calibrator, fit_calibrator
from .pooling import Pooled, Roles, between_parts, fit_pooled, member_roles, part_prior, role_matrix, weight_variance
from .quality import patient_folds, quality
from .settings import FitSettings
from .significance import judge, patient_resamples, resampled_mean, study_log_loss
from .table import FittingTable
from .thresholds import shrink_factor
from .weights import fit_weights, pool

PLAIN, POOLED, PART = "plain", "pooled", "part"


@dataclass
class Probabilities:
    """Weights and calibrator of one part: ``w_own`` (the part's own fit, before shrinkage), ``w`` used, ``lam``."""

    w_own: np.ndarray
    w: np.ndarray
    lam: float
    calibrator: Calibrator

    def apply(self, P: np.ndarray) -> np.ndarray:
        """Calibrated weighted mean of each row of ``P``."""
        return self.calibrator.apply(pool(P, self.w))


def fixed_probabilities(w: np.ndarray) -> Probabilities:
    """Weights ``w`` as they are, no calibrator (the plain mean, or a prior)."""
    return Probabilities(w, w, 0.0, IDENTITY)


def plain_weights(m: int) -> np.ndarray:
    """1/m each."""
    return np.full(m, 1.0 / m)


def fit_probabilities(
    P: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float, settings: FitSettings
) -> Probabilities:
    """The part's own weights shrunk toward ``prior`` by ``lam``, then its calibrator (shrunk by n/(n+K))."""
    if len(np.unique(y)) < 2:
        return fixed_probabilities(prior)
    w_own = fit_weights(P, y)
    w = lam * w_own + (1.0 - lam) * prior
    w = w / w.sum()
    calibrator = fit_calibrator(pool(P, w), y, settings.calibrate, shrink_factor(len(y), settings.shrinkage))
    return Probabilities(w_own, w, lam, calibrator)


@dataclass
class Pooling:
    """The pooled weights, their guard over all studies and the out-of-fold pooled probability of every study."""

    table: FittingTable
    names: tuple[str, ...]
    roles: Roles
    X: np.ndarray
    fit: Pooled
    kept: bool
    guard: dict[str, Any]
    oof: np.ndarray

    def prior(self, cols: list[int]) -> np.ndarray:
        """The prior of a part with members ``cols``: pooled weights when kept, else the plain mean."""
        return part_prior(self.fit.weights, cols, self.roles) if self.kept else plain_weights(len(cols))

    def fold_prior(self, left_out: np.ndarray, cols: list[int]) -> np.ndarray:
        """The prior refitted without the rows ``left_out`` (a part's test fold): nothing of them is seen."""
        if not self.kept:
            return plain_weights(len(cols))
        keep = ~left_out
        return part_prior(fit_pooled(self.X[keep], self.table.y[keep], self.roles.names).weights, cols, self.roles)

    def to_dict(self) -> dict[str, Any]:
        """JSON record: roles, each member's role, pooled role weights, dropped roles, guard."""
        return {
            "roles": list(self.roles.names),
            "member_roles": {n: self.roles.names[r] for n, r in zip(self.names, self.roles.of_member)},
            "weights": dict(zip(self.roles.names, map(float, self.fit.weights))),
            "dropped": self.fit.dropped,
            "guard": self.guard,
        }


def pooled_probabilities(table: FittingTable, rows: np.ndarray, role_weights: np.ndarray, roles: Roles) -> np.ndarray:
    """The pooled probability of the studies ``rows`` (indices): each part's prior applied to its members."""
    out = np.full(len(rows), np.nan)
    parts = table.part[rows]
    for part in set(parts.tolist()):
        cols = table.part_members[part]
        mine = parts == part
        out[mine] = pool(table.P[np.ix_(rows[mine], cols)], part_prior(role_weights, cols, roles))
    return out


def fit_pooling(table: FittingTable, names: tuple[str, ...], settings: FitSettings) -> Pooling:
    """Pooled role weights on all studies, judged by patient-grouped CV against the plain mean (log loss)."""
    roles = member_roles(table.part_members, names)
    X = role_matrix(table.P, roles)
    fit = fit_pooled(X, table.y, roles.names)
    y = table.y
    folds = patient_folds(y, table.patient, settings.cv_folds, settings.seed)
    plain = pool(table.P, np.zeros(table.P.shape[1]))
    oof = np.full(len(y), np.nan)
    for train, test in folds:
        oof[test] = pooled_probabilities(table, test, fit_pooled(X[train], y[train], roles.names).weights, roles)
    guard: dict[str, Any] = {"kept": False, "plain": _ll_auc(y, plain, settings), "fitted_cv": None}
    if folds and len(roles.names) > 1:
        guard["fitted_cv"] = _ll_auc(y, oof, settings)
        gains = study_log_loss(y, plain) - study_log_loss(y, oof)
        counts = patient_resamples(table.patient, settings.seed)
        guard.update(judge(float(np.mean(gains)), resampled_mean(gains, counts)))
    return Pooling(table, names, roles, X, fit, bool(guard["kept"]), guard, oof)


def part_shrinkage(pooling: Pooling, parts: list[str], settings: FitSettings) -> tuple[dict[str, float], float]:
    """lam_p of each part (empirical Bayes, capped by n/(n+K)) and tau2 (see the module doc)."""
    table = pooling.table
    own, priors, variances, sizes = {}, {}, {}, {}
    for part in parts:
        rows, cols = table.part == part, table.part_members[part]
        if len(cols) < 2:  # one member: weight 1 whatever lam is
            continue
        P, y = table.P[np.ix_(rows, cols)], table.y[rows]
        own[part], priors[part] = fit_weights(P, y), pooling.prior(cols)
        variances[part], sizes[part] = weight_variance(P, y, settings.seed), len(y)
    tau2 = between_parts(list(own.values()), list(priors.values()), list(variances.values()))
    lams = dict.fromkeys(parts, 0.0)
    for part, v in variances.items():
        eb = tau2 / (tau2 + v) if np.isfinite(v) and tau2 + v > 0 else 0.0
        lams[part] = float(min(eb, shrink_factor(sizes[part], settings.shrinkage)))
    return lams, tau2


@dataclass
class PartFit:
    """One part's weights: the ``source`` it uses (plain / pooled / part), its CV folds and the guard's record.

    ``fit`` is the part candidate on all its studies, ``prior`` its prior,
    ``fold_priors[k]`` the prior refitted without fold k's studies.
    """

    fit: Probabilities
    prior: np.ndarray
    source: str
    folds: list[tuple[np.ndarray, np.ndarray]]
    fold_priors: list[np.ndarray]
    guard: dict[str, Any]
    resamples: np.ndarray  # (b, n) copies of each study per patient resample, shared by the part's guards

    def final(self) -> Probabilities:
        """What the part uses, fitted on all its studies."""
        if self.source == PART:
            return self.fit
        return fixed_probabilities(self.prior if self.source == POOLED else plain_weights(len(self.prior)))

    def chosen(self, P: np.ndarray, y: np.ndarray, k: int, settings: FitSettings) -> Probabilities:
        """The same choice refitted on fold k's training studies ``(P, y)``."""
        if self.source == PART:
            return fit_probabilities(P, y, self.fold_priors[k], self.fit.lam, settings)
        return fixed_probabilities(self.fold_priors[k] if self.source == POOLED else plain_weights(P.shape[1]))


def guarded_part(pooling: Pooling, part: str, lam: float, settings: FitSettings) -> PartFit:
    """The part's weights: its prior, or the part candidate when CV says it beats the prior; plain when they harm."""
    table = pooling.table
    index = np.flatnonzero(table.part == part)
    cols = table.part_members[part]
    P, y, groups = table.P[np.ix_(index, np.asarray(cols, dtype=np.intp))], table.y[index], table.patient[index]
    prior = pooling.prior(cols)
    fit = fit_probabilities(P, y, prior, lam, settings)
    folds = patient_folds(y, groups, settings.cv_folds, settings.seed)
    counts = patient_resamples(groups, settings.seed)
    source = POOLED if pooling.kept else PLAIN
    plain = pool(P, np.zeros(len(cols)))
    guard: dict[str, Any] = {"source": source, "source_prior": source, "lam": lam, "plain": _ll_auc(y, plain, settings)}
    if not folds:
        guard.update(kept=source != PLAIN, fitted_cv=None)
        return PartFit(fit, prior, source, folds, [], guard, counts)
    fold_priors = []
    oof = {k: np.full(len(y), np.nan) for k in (PLAIN, POOLED, PART)}
    for train, test in folds:
        left_out = np.zeros(len(table.y), dtype=bool)
        left_out[index[test]] = True
        fold_priors.append(pooling.fold_prior(left_out, cols))
        oof[PLAIN][test] = plain[test]
        oof[POOLED][test] = pool(P[test], fold_priors[-1])
        oof[PART][test] = fit_probabilities(P[train], y[train], fold_priors[-1], lam, settings).apply(P[test])
    losses = {k: study_log_loss(y, v) for k, v in oof.items()}
    base = losses[source]
    guard["part"] = judge(float(np.mean(base - losses[PART])), resampled_mean(base - losses[PART], counts))
    guard["part"]["fitted_cv"] = _ll_auc(y, oof[PART], settings)
    if guard["part"]["kept"]:
        source = PART
    if source != PLAIN:
        worse = losses[source] - losses[PLAIN]
        guard["harm"] = judge(float(np.mean(worse)), resampled_mean(worse, counts))
        if guard["harm"]["kept"]:
            source = PLAIN
    guard.update(source=source, kept=source != PLAIN, fitted_cv=_ll_auc(y, oof[source], settings))
    return PartFit(fit, prior, source, folds, fold_priors, guard, counts)


def _ll_auc(y: np.ndarray, p: np.ndarray, settings: FitSettings) -> dict[str, Any]:
    q = quality(y, p, p > settings.plain_threshold)
    return {"log_loss": q["log_loss"], "auc": q["auc"]}
