"""Fit an ensemble per body part on a labelled studies table: weights, calibrator, threshold, and their CV quality.

Per body part with enough studies of both classes (n studies, m members):

1. **weights** ``w_fit`` = non-negative weights summing to 1 fitted by the
   log loss of the weighted mean, with a base-rate pseudo-member that keeps
   useless members from getting weight as a calibration device
   (:func:`~mura_ens.fitting.weights.fit_weights`), shrunk toward the plain mean: ``w = lam * w_fit + (1 - lam) / m`` with
   ``lam = n / (n + shrinkage)``;
2. **calibrator** (optional) fitted on the weighted means, shrunk toward the
   identity by the same ``lam`` (:mod:`~mura_ens.fitting.calibration`);
3. **threshold** chosen by the rule on the calibrated probabilities
   (``t_part``), shrunk toward the global threshold:
   ``t = lam_t * t_part + (1 - lam_t) * t_global``. ``t_global`` is the rule's
   threshold on every fitting study at once (each with the probability the
   ensemble gives it). ``threshold_shrinkage=K`` sets ``lam_t = n / (n + K)``;
   the default (None, ``auto``) is empirical Bayes, capped by the weights' factor:
   ``lam_t = min(tau2 / (tau2 + v_part), lam)``, where ``v_part`` is the
   bootstrap variance of ``t_part`` (100 resamples of the part's studies) and
   ``tau2 = max(0, mean((t_part - t_global)^2) - mean(v_part))`` over the fitted
   parts (0 with fewer than two) is how much the parts' true thresholds differ.

Why thresholds are shrunk (FACTS.md, "Fitting an ensemble on few studies":
demo models, ~9 studies per part, 40 random patient halves): the plain
body-part mean scored kappa 0.878 on the other half; weights fitted by log loss
and shrunk by n/(n+10) scored 0.890; the same plus a kappa-maximising threshold
per part scored **0.79**. A weight vector is a smooth function of all n log
losses; a kappa-optimal threshold is an argmax over n step functions, set by
the one or two studies nearest it, so on ~10 studies it mostly fits noise.
The global threshold pools every part (7x the studies). How far to trust a
part's own threshold depends on how much parts really differ, which no fixed
K captures. A simulation (7 parts, a binormal generalist with d' = 2.8 and a
near-constant specialist per part, kappa on 1,000 held-out studies per part,
10 repetitions) gave, for per-part thresholds / global only / K = 10 / K = 40 / auto:

- parts alike, n = 10: 0.799 / 0.820 / 0.824 / 0.825 / 0.825; n = 40: 0.818 / 0.825 / 0.823 / 0.827 / 0.823;
- parts differ (generalist logit offset +-1 per part), n = 10: 0.801 / 0.763 /
  0.809 / 0.787 / 0.810; n = 40: 0.819 / 0.774 / 0.822 / 0.814 / 0.821.

Per-part thresholds on ~10 studies lose, as in FACTS; the global threshold
loses when parts differ; ``auto`` stays within 0.004 of the best in each case.
The cap ``lam_t <= lam`` keeps a part from trusting its threshold (an argmax
whose bootstrap variance is underestimated on a handful of studies) more than
its weights.

Thresholds are chosen on the rule's curve averaged over bootstrap resamples
(:func:`~mura_ens.fitting.thresholds.smooth_threshold`), and the global one is
shrunk toward ``plain_threshold`` by N/(N+k) (k = ``threshold_shrinkage``, or
``shrinkage`` under auto).

**Guard** (patient-grouped CV inside the part, same folds for every check):
the fitted weights/calibrator are kept only when their out-of-fold log loss
beats the plain mean's; the part's threshold only when the whole
procedure's out-of-fold kappa (Youden's J for ``youden``) beats
both the plain mean's and the kept probabilities' at ``plain_threshold``;
kept weights whose out-of-fold kappa at ``plain_threshold`` is below the plain
mean's are dropped. The global threshold is kept only when its out-of-fold
kappa over all studies beats ``plain_threshold``'s. "Beats" means by more than
noise: the gain must be positive on all studies and in at least 90% of 1,000
paired patient resamples of the same out-of-fold predictions
(:mod:`~mura_ens.fitting.significance`). Ties, noise-sized gains and impossible
CV keep the plain choice; ``info["guard"]`` and the notes record why. On the
demo (15-24 fitting studies per part) unguarded kappa thresholds cost up to
0.05 overall study kappa on the valid split, and a guard that took any gain
0.016 (docs/ensembles.md).

Parts with fewer than ``min_studies`` studies or one class keep the plain
mean with the global calibrator (fitted on the plain means of all studies)
and the global threshold, and say so in their notes. Studies of unknown body
part only inform the global calibrator and threshold.

Quality (per part, in ``quality``): the plain mean on all the part's studies
(at ``plain_threshold``; it is not fitted, so this is out-of-sample already),
each member alone, and the whole fitting procedure above judged by
patient-grouped, label-stratified cross-validation inside the part (each fold
refits weights, calibrator and threshold on the other folds; its global
threshold uses the other parts' studies and the training folds only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..io import TEXT_ERRORS
from .calibration import IDENTITY, Calibrator, fit_calibrator
from .ensemble import FITTED, PLAIN_MEAN, FittedEnsemble, Member, PartModel
from .quality import patient_folds, quality
from .settings import FitSettings
from .significance import TIE, judge, patient_resamples, resampled_mean, study_log_loss, verdict
from .table import FittingTable, fitting_table
from .thresholds import (
    between_part_variance,
    bootstrap_variance,
    criterion,
    resampled_rule_value,
    rule_value,
    shrink_factor,
    shrunk_threshold,
    smooth_threshold,
)
from .weights import fit_weights, pool


@dataclass
class _Probabilities:
    """Weights and calibrator of one part, fitted on complete rows."""

    w_fit: np.ndarray
    w: np.ndarray
    lam: float
    calibrator: Calibrator

    def apply(self, P: np.ndarray) -> np.ndarray:
        return self.calibrator.apply(pool(P, self.w))


def _plain_probabilities(m: int) -> _Probabilities:
    plain = np.full(m, 1.0 / m)
    return _Probabilities(plain, plain, 0.0, IDENTITY)


@dataclass
class _PartFit:
    """One part's fitted probabilities, its CV folds and patient resamples, and the weights guard's verdict."""

    fit: _Probabilities
    folds: list[tuple[np.ndarray, np.ndarray]]
    weights_kept: bool
    guard: dict[str, Any]
    resamples: np.ndarray  # (b, n) copies of each study per patient resample, shared by the part's guards

    def chosen(self, P: np.ndarray, y: np.ndarray, settings: FitSettings) -> _Probabilities:
        """The fitted probabilities on (P, y) when the guard kept them, else the plain mean."""
        return _fit_probabilities(P, y, settings) if self.weights_kept else _plain_probabilities(P.shape[1])


@dataclass
class _Global:
    """The global threshold: the rule's own on all studies, shrunk toward ``plain_threshold``, and its guard."""

    threshold: float
    kept: bool
    info: dict[str, Any]


def fit_ensemble(
    studies: pd.DataFrame, members: Sequence[Member], settings: FitSettings | None = None
) -> FittedEnsemble:
    """Fit weights, calibrators and thresholds per body part on a labelled ``studies`` table.

    ``studies`` is a ``studies.csv`` as ``score`` writes it (study, patient,
    body_part, label, one ``prob__<model>`` per model; ``status`` when present);
    ``members`` names every model with a probability column and its sha256.
    A part's members are the models with probabilities for its studies.
    The method is described in this module's docstring and docs/ensembles.md.

    Raises
    ------
    UsageError
        Missing columns, probability columns of non-members, bad labels or
        probabilities, no labelled scored study.
    """
    settings = settings or FitSettings()
    members = tuple(members)
    table = fitting_table(studies, members)
    plain_all = pool(table.P, np.zeros(len(members)))
    global_cal = fit_calibrator(plain_all, table.y, settings.calibrate, shrink_factor(len(table.y), settings.shrinkage))
    q = global_cal.apply(plain_all)  # what each fitting study gets from the ensemble; fitted parts below
    fits: dict[str, _PartFit] = {}
    reasons: dict[str, str] = {}
    for part, cols in table.part_members.items():
        if not part:
            continue
        rows = table.part == part
        reason = _plain_reason(table.y[rows], settings)
        if reason:
            reasons[part] = reason
            continue
        P, y = table.P[np.ix_(rows, cols)], table.y[rows]
        fits[part] = _guarded_probabilities(P, y, table.patient[rows], settings)
        q[rows] = fits[part].chosen(P, y, settings).apply(P)
    glob = _global_threshold(table, q, settings)
    tau2 = _between_parts(table.y, q, table.part, list(fits), glob.threshold, settings)
    parts: dict[str, PartModel] = {}
    for part, cols in table.part_members.items():
        if not part:
            continue
        names = [members[j].name for j in cols]
        if part in fits:
            parts[part] = _fitted_part(table, part, names, (fits[part], q, glob, tau2), settings)
        else:
            parts[part] = _plain_part(table, part, names, (global_cal, glob.threshold, reasons[part]), settings)
    notes = list(table.notes) + ([glob.info["note"]] if "note" in glob.info else [])
    if "" in table.part_members:
        n = int(np.sum(table.part == ""))
        notes.append(
            f"{n} stud{'y' if n == 1 else 'ies'} of unknown body part: used for the global calibrator and threshold only"
        )
    return FittedEnsemble(
        members=members,
        parts=parts,
        global_calibrator=global_cal,
        global_threshold=glob.threshold,
        settings=settings,
        fitting=_fitting_record(table),
        mura_ens_version=__version__,
        notes=tuple(notes),
        global_info=glob.info,
    )


def _plain_reason(y: np.ndarray, settings: FitSettings) -> str:
    if len(y) < settings.min_studies:
        return f"{len(y)} labelled studies < --min-studies {settings.min_studies}: plain mean, global threshold"
    if len(np.unique(y)) < 2:
        which = "abnormal" if y[0] == 1 else "normal"
        return f"one class (all {len(y)} studies {which}): plain mean, global threshold"
    return ""


def _fit_probabilities(P: np.ndarray, y: np.ndarray, settings: FitSettings) -> _Probabilities:
    """Shrunk weights and calibrator of one part (plain mean and identity on one class)."""
    m = P.shape[1]
    if len(np.unique(y)) < 2:
        return _plain_probabilities(m)
    lam = shrink_factor(len(y), settings.shrinkage)
    w_fit = fit_weights(P, y)
    plain = np.full(m, 1.0 / m)
    w = lam * w_fit + (1.0 - lam) * plain
    w = w / w.sum()
    calibrator = fit_calibrator(pool(P, w), y, settings.calibrate, lam)
    return _Probabilities(w_fit, w, lam, calibrator)


def _guarded_probabilities(P: np.ndarray, y: np.ndarray, groups: np.ndarray, settings: FitSettings) -> _PartFit:
    """Fit the part's probabilities and keep them only if patient-grouped CV beats the plain mean.

    Kept when the out-of-fold log loss (what the weights and calibrator
    minimise) is lower than the plain mean's by more than noise: the paired
    patient bootstrap of :mod:`~mura_ens.fitting.significance` (a tie keeps the
    plain mean); never kept when cross-validation is impossible. The AUC is recorded,
    not judged: out-of-fold probabilities pooled over folds with different
    calibrators rank worse than any one fold's, so a calibration-only gain would lose on it.
    """
    fit = _fit_probabilities(P, y, settings)
    folds = patient_folds(y, groups, settings.cv_folds, settings.seed)
    counts = patient_resamples(groups, settings.seed)
    plain = pool(P, np.zeros(P.shape[1]))
    base = quality(y, plain, plain > settings.plain_threshold)
    guard: dict[str, Any] = {"kept": False, "plain": {k: base[k] for k in ("log_loss", "auc")}, "fitted_cv": None}
    if not folds:
        return _PartFit(fit, folds, False, guard, counts)
    oof = np.full(len(y), np.nan)
    for train, test in folds:
        oof[test] = _fit_probabilities(P[train], y[train], settings).apply(P[test])
    cv = quality(y, oof, oof > settings.plain_threshold)
    guard["fitted_cv"] = {k: cv[k] for k in ("log_loss", "auc")}
    gains = study_log_loss(y, plain) - study_log_loss(y, oof)
    guard.update(judge(float(np.mean(gains)), resampled_mean(gains, counts)))
    return _PartFit(fit, folds, guard["kept"], guard, counts)


def _shrunk_global(y: np.ndarray, q: np.ndarray, settings: FitSettings) -> tuple[float | None, float, float]:
    """(the rule's own smoothed threshold or None, it shrunk toward ``plain_threshold`` by n/(n+k), that factor)."""
    if settings.threshold_rule == "fixed":
        return None, settings.threshold, 0.0
    raw = smooth_threshold(y, q, settings.threshold_rule, seed=settings.seed)
    if raw is None:
        return None, settings.threshold, 0.0
    k = settings.shrinkage if settings.threshold_shrinkage is None else settings.threshold_shrinkage
    lam = shrink_factor(len(y), k)
    return raw, shrunk_threshold(raw, settings.plain_threshold, lam), lam


def _global_threshold(table: FittingTable, q: np.ndarray, settings: FitSettings) -> _Global:
    """The global threshold, guarded: kept only if patient-grouped CV on all studies beats ``plain_threshold``."""
    if settings.threshold_rule == "fixed":
        return _Global(settings.threshold, True, {"threshold_fitted": None, "threshold_shrink": 0.0, "guard": None})
    y, rule, t_plain = table.y, settings.threshold_rule, settings.plain_threshold
    raw, threshold, lam = _shrunk_global(y, q, settings)
    folds = patient_folds(y, table.patient, settings.cv_folds, settings.seed)
    oof = np.zeros(len(y), dtype=np.int64)
    for train, test in folds:
        oof[test] = q[test] > _shrunk_global(y[train], q[train], settings)[1]
    plain_value = rule_value(y, q > t_plain, rule)
    cv_value = rule_value(y, oof, rule) if folds else None
    guard: dict[str, Any] = {"kept": False, "criterion": criterion(rule), "plain": plain_value, "fitted_cv": cv_value}
    if cv_value is not None and plain_value is not None:
        counts = patient_resamples(table.patient, settings.seed)
        gains = resampled_rule_value(y, oof, counts, rule) - resampled_rule_value(y, q > t_plain, counts, rule)
        guard.update(judge(cv_value - plain_value, gains))
    info: dict[str, Any] = {"threshold_fitted": raw, "threshold_shrink": lam, "guard": guard}
    if not guard["kept"]:
        info["note"] = _rejected_note("global threshold", guard, rule, t_plain)
    return _Global(float(threshold) if guard["kept"] else t_plain, guard["kept"], info)


def _rejected_note(what: str, guard: dict[str, Any], rule: str, t_plain: float) -> str:
    cv, plain = guard["fitted_cv"], guard["plain"]
    if cv is None or plain is None:
        return f"{what} not judged (too few patients of a class for cross-validation): {t_plain:g} kept"
    return (
        f"{what}: cross-validated {criterion(rule)} {cv:.3f} vs {plain:.3f} at {t_plain:g}, "
        f"{verdict(guard)}: {t_plain:g} kept"
    )


def _part_threshold(
    y: np.ndarray, q: np.ndarray, prior: tuple[float, float], settings: FitSettings
) -> tuple[float | None, float, float]:
    """(the part's own threshold or None, the shrunk threshold used, lam_t); ``prior`` = (t_global, tau2)."""
    if settings.threshold_rule == "fixed":
        return None, settings.threshold, 0.0
    t_global, tau2 = prior
    raw = smooth_threshold(y, q, settings.threshold_rule, seed=settings.seed)
    if raw is None:
        return None, t_global, 0.0
    if settings.threshold_shrinkage is not None:
        lam_t = shrink_factor(len(y), settings.threshold_shrinkage)
    else:
        var = bootstrap_variance(y, q, settings.threshold_rule, seed=settings.seed)
        lam_t = min(_eb_factor(tau2, var), shrink_factor(len(y), settings.shrinkage))
    return raw, shrunk_threshold(raw, t_global, lam_t), lam_t


def _eb_factor(tau2: float, var: float | None) -> float:
    """tau2 / (tau2 + var): the empirical-Bayes weight of a part's own threshold (0 when unknown)."""
    if var is None or tau2 + var <= 0:
        return 0.0
    return tau2 / (tau2 + var)


def _between_parts(
    y: np.ndarray, q: np.ndarray, part: np.ndarray, fitted: list[str], t_global: float, settings: FitSettings
) -> float:
    """tau2 of the fitted parts' thresholds around the global one (0 with fewer than 2 parts, or a fixed k)."""
    if settings.threshold_rule == "fixed" or settings.threshold_shrinkage is not None:
        return 0.0
    raws, variances = [], []
    for name in fitted:
        rows = part == name
        raw = smooth_threshold(y[rows], q[rows], settings.threshold_rule, seed=settings.seed)
        var = bootstrap_variance(y[rows], q[rows], settings.threshold_rule, seed=settings.seed)
        if raw is not None and var is not None:
            raws.append(raw)
            variances.append(var)
    return between_part_variance(raws, variances, t_global) if len(raws) >= 2 else 0.0


def _cross_validate(
    P: np.ndarray,
    y: np.ndarray,
    part_fit: _PartFit,
    others: tuple[np.ndarray, np.ndarray, _Global, float],
    settings: FitSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (probabilities, predictions) of the part's procedure (its chosen probabilities + own threshold).

    Each fold refits on the other folds; its prior is the global threshold of
    the other parts' studies and the training folds (``plain_threshold`` when
    the global guard rejected the global threshold).
    """
    other_y, other_q, glob, tau2 = others
    oof_q = np.full(len(y), np.nan)
    oof_pred = np.zeros(len(y), dtype=np.int64)
    for train, test in part_fit.folds:
        fit = part_fit.chosen(P[train], y[train], settings)
        q_train = fit.apply(P[train])
        prior = settings.plain_threshold
        if glob.kept:
            both = (np.concatenate([other_y, y[train]]), np.concatenate([other_q, q_train]))
            prior = _shrunk_global(*both, settings)[1]
        _, t, _ = _part_threshold(y[train], q_train, (prior, tau2), settings)
        oof_q[test] = fit.apply(P[test])
        oof_pred[test] = (oof_q[test] > t).astype(np.int64)
    return oof_q, oof_pred


def _threshold_guard(
    y: np.ndarray, plain: np.ndarray, oof: tuple[np.ndarray, np.ndarray], part_fit: _PartFit, settings: FitSettings
) -> dict[str, Any]:
    """Keep the part's own threshold only if its CV criterion beats both the plain mean and the probabilities at
    ``plain_threshold`` by more than noise (the paired patient bootstrap of
    :mod:`~mura_ens.fitting.significance`, on the better of the two per resample);
    drop fitted weights whose CV criterion at ``plain_threshold`` is below the plain mean's."""
    rule, t_plain = settings.threshold_rule, settings.plain_threshold
    oof_q, oof_pred = oof
    plain_value = rule_value(y, plain > t_plain, rule)
    at_plain = rule_value(y, oof_q > t_plain, rule) if part_fit.weights_kept else plain_value
    fitted = rule_value(y, oof_pred, rule) if part_fit.folds else None
    guard: dict[str, Any] = {"criterion": criterion(rule), "plain": plain_value}
    guard.update({"weights_at_plain_threshold_cv": at_plain, "fitted_cv": fitted})
    if rule == "fixed":
        guard.update(kept=True, weights_dropped=False)
        return guard
    if plain_value is None or at_plain is None or fitted is None:
        guard.update(kept=False, weights_dropped=False)
        return guard
    counts = part_fit.resamples
    best_plain = resampled_rule_value(y, plain > t_plain, counts, rule)
    if part_fit.weights_kept:
        best_plain = np.fmax(best_plain, resampled_rule_value(y, oof_q > t_plain, counts, rule))
    guard.update(
        judge(fitted - max(plain_value, at_plain), resampled_rule_value(y, oof_pred, counts, rule) - best_plain)
    )
    guard["weights_dropped"] = bool(part_fit.weights_kept and not guard["kept"] and at_plain < plain_value - TIE)
    return guard


def _member_quality(P: np.ndarray, y: np.ndarray, names: list[str], settings: FitSettings) -> dict[str, Any]:
    t = settings.plain_threshold
    return {name: quality(y, P[:, j], P[:, j] > t) for j, name in enumerate(names)}


def _fitted_part(
    table: FittingTable,
    part: str,
    names: list[str],
    fitted: tuple[_PartFit, np.ndarray, _Global, float],
    settings: FitSettings,
) -> PartModel:
    part_fit, q, glob, tau2 = fitted
    rows = table.part == part
    cols = table.part_members[part]
    P, y = table.P[np.ix_(rows, cols)], table.y[rows]
    raw, threshold, lam_t = _part_threshold(y, q[rows], (glob.threshold, tau2), settings)
    oof = _cross_validate(P, y, part_fit, (table.y[~rows], q[~rows], glob, tau2), settings)
    plain = pool(P, np.zeros(len(cols)))
    threshold_guard = _threshold_guard(y, plain, oof, part_fit, settings)
    weights_kept = part_fit.weights_kept and not threshold_guard["weights_dropped"]
    chosen = part_fit.fit if weights_kept else _plain_probabilities(len(cols))
    measured: dict[str, Any] = {
        "folds": len(part_fit.folds),
        "plain": quality(y, plain, plain > settings.plain_threshold),
        "fitted_cv": quality(y, *oof) if part_fit.folds else None,
        "members": _member_quality(P, y, names, settings),
    }
    info = {
        "weights_fitted": dict(zip(names, map(float, part_fit.fit.w_fit))),
        "shrink": part_fit.fit.lam,
        "threshold_fitted": raw,
        "threshold_shrink": lam_t,
        "guard": {"weights": {**part_fit.guard, "kept": weights_kept}, "threshold": threshold_guard},
        "quality": measured,
    }
    notes = _fitted_notes(len(names), part_fit.fit.lam, (raw, threshold, lam_t, glob.threshold), settings)
    notes += _guard_notes(part_fit, threshold_guard, settings)
    return PartModel(
        status=FITTED if weights_kept or threshold_guard["kept"] else PLAIN_MEAN,
        weights=dict(zip(names, map(float, chosen.w))),
        calibrator=chosen.calibrator,
        threshold=float(threshold if threshold_guard["kept"] else settings.plain_threshold),
        n_studies=len(y),
        n_positive=int(y.sum()),
        info=info,
        notes=tuple(notes),
    )


def _fitted_notes(
    m: int, lam: float, thresholds: tuple[float | None, float, float, float], settings: FitSettings
) -> list[str]:
    raw, threshold, lam_t, t_global = thresholds
    notes = ["one member: weight 1"] if m == 1 else []
    if m > 1 and lam < 1:
        notes.append(f"weights {lam:.2f} fitted + {1 - lam:.2f} plain mean (n/(n+{settings.shrinkage:g}))")
    if settings.threshold_rule != "fixed":
        if raw is None:
            notes.append(f"no {settings.threshold_rule} threshold on the part alone: global {t_global:.3f}")
        elif lam_t < 1:
            k = settings.threshold_shrinkage
            how = "empirical Bayes" if k is None else f"n/(n+{k:g})"
            notes.append(f"threshold {lam_t:.2f} x part's {raw:.3f} + {1 - lam_t:.2f} x global {t_global:.3f} ({how})")
    return notes


def _guard_notes(part_fit: _PartFit, threshold_guard: dict[str, Any], settings: FitSettings) -> list[str]:
    """Why the guard kept the plain mean's weights and/or threshold (nothing when it kept the fit)."""
    t_plain, crit = settings.plain_threshold, threshold_guard["criterion"]
    if not part_fit.folds:
        return [f"too few patients of a class for cross-validation: fit not judged, plain mean at {t_plain:g}"]
    notes = []
    w = part_fit.guard
    if not part_fit.weights_kept:
        cv, plain = w["fitted_cv"], w["plain"]
        notes.append(
            f"fitted weights not kept: cross-validated log loss {cv['log_loss']:.3f} vs plain {plain['log_loss']:.3f}, "
            f"AUC {_num(cv['auc'])} vs {_num(plain['auc'])}, {verdict(w)}: plain mean"
        )
    elif threshold_guard["weights_dropped"]:
        notes.append(
            f"fitted weights dropped: cross-validated {crit} at {t_plain:g} "
            f"{threshold_guard['weights_at_plain_threshold_cv']:.3f} < plain mean's {threshold_guard['plain']:.3f}"
        )
    if settings.threshold_rule != "fixed" and not threshold_guard["kept"]:
        best = max(
            v for v in (threshold_guard["plain"], threshold_guard["weights_at_plain_threshold_cv"]) if v is not None
        )
        notes.append(
            f"own threshold not kept: cross-validated {crit} {_num(threshold_guard['fitted_cv'])} vs "
            f"{best:.3f} at {t_plain:g}, {verdict(threshold_guard)}: threshold {t_plain:g}"
        )
    return notes


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _plain_part(
    table: FittingTable,
    part: str,
    names: list[str],
    fallback: tuple[Calibrator, float, str],
    settings: FitSettings,
) -> PartModel:
    calibrator, t_global, reason = fallback
    rows = table.part == part
    cols = table.part_members[part]
    P, y = table.P[np.ix_(rows, cols)], table.y[rows]
    plain = pool(P, np.zeros(len(cols)))
    info = {
        "weights_fitted": None,
        "shrink": 0.0,
        "threshold_fitted": None,
        "threshold_shrink": 0.0,
        "quality": {
            "folds": 0,
            "plain": quality(y, plain, plain > settings.plain_threshold),
            "fitted_cv": None,
            "members": _member_quality(P, y, names, settings),
        },
    }
    return PartModel(
        status=PLAIN_MEAN,
        weights={name: 1.0 / len(names) for name in names},
        calibrator=calibrator,
        threshold=float(t_global),
        n_studies=len(y),
        n_positive=int(y.sum()),
        info=info,
        notes=(reason,),
    )


def fitting_set_sha256(studies: Sequence[str], labels: Sequence[int]) -> str:
    """sha256 of the fitting set: its ``study<TAB>label`` lines sorted by study, newline-terminated, UTF-8.

    Undecodable file-name bytes kept by surrogateescape (:mod:`mura_ens.io`) are hashed as the original bytes.
    """
    import hashlib

    lines = sorted(f"{s}\t{int(v)}\n" for s, v in zip(studies, labels))
    return hashlib.sha256("".join(lines).encode("utf-8", TEXT_ERRORS)).hexdigest()


def _fitting_record(table: FittingTable) -> dict[str, Any]:
    by_part = {}
    for part in sorted(set(table.part.tolist())):
        rows = table.part == part
        by_part[part or "unknown"] = {"n_studies": int(rows.sum()), "n_positive": int(table.y[rows].sum())}
    return {
        "n_studies": len(table.y),
        "n_positive": int(table.y.sum()),
        "sha256": fitting_set_sha256(table.study.tolist(), table.y.tolist()),
        "by_body_part": by_part,
        "studies": sorted(table.study.tolist()),
    }
