"""Fit an ensemble per body part on a labelled studies table: pooled weights, calibrator, threshold, CV quality.

The method (docs/ensembles.md has the equations and the measurements behind them):

1. **Weights, pooled across parts** (:mod:`.pooling`, :mod:`.partweights`): each member's
   worth is estimated from every part it serves (specialists of the different
   parts share one role), with a base-rate pseudo-member and backward
   likelihood-ratio selection that drops useless members; judged once on all
   studies by patient-grouped CV against the plain mean (log loss, paired
   patient bootstrap). Each part starts from these pooled weights (its
   *prior*; the plain mean when the pooled weights were rejected) and moves
   toward its own fit by an empirical-Bayes factor ``lam_p = tau2/(tau2+v_p)``
   (capped by n/(n+K)) only when CV on the part says the move pays; a part
   whose chosen weights are significantly worse than the plain mean on its own
   studies keeps the plain mean.
2. **Calibrator** (optional) on the part's weighted means, shrunk toward the identity by n/(n+K).
3. **Threshold** by the rule on the bootstrap-averaged curve, shrunk toward the
   global threshold by empirical Bayes (``lam_t = min(tau2_t / (tau2_t + v_part), n/(n+K))``);
   the global threshold is shrunk toward ``plain_threshold`` by N/(N+K).
   A part's own threshold is kept only when the whole procedure's out-of-fold kappa
   beats both the plain mean's and the chosen weights' at ``plain_threshold`` by
   more than noise (:mod:`.significance`); the global one likewise over all studies.

Parts with fewer than ``min_studies`` studies or one class use the pooled weights
(when kept; else the plain mean with the global calibrator) and the global threshold.
Studies of unknown body part inform the pooled weights, the global calibrator and threshold.

Quality (per part, in ``quality``): the plain mean at ``plain_threshold`` (not
fitted, so already out of sample), each member alone, and ``used_cv``: what the
part *uses* (its chosen weights refitted per fold, its own threshold when kept
else ``plain_threshold``), judged by patient-grouped CV inside the fitting set.
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
from .ensemble import FittedEnsemble, Member, PartModel, part_status
from .partweights import (
    PART,
    PLAIN,
    POOLED,
    PartFit,
    Pooling,
    fit_pooling,
    fixed_probabilities,
    guarded_part,
    part_shrinkage,
    plain_weights,
)
from .quality import patient_folds, quality
from .settings import FitSettings
from .significance import judge, patient_resamples, verdict
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
from .weights import pool


@dataclass
class _Global:
    """The global threshold: the rule's own on all studies, shrunk toward ``plain_threshold``, and its guard."""

    threshold: float
    kept: bool
    info: dict[str, Any]


def fit_ensemble(
    studies: pd.DataFrame,
    members: Sequence[Member],
    settings: FitSettings | None = None,
    *,
    precision: str | None = None,
    tta: str | None = None,
) -> FittedEnsemble:
    """Fit weights, calibrators and thresholds per body part on a labelled ``studies`` table.

    ``studies`` is a ``studies.csv`` as ``score`` writes it (study, patient,
    body_part, label, one ``prob__<model>`` per model; ``status`` when present);
    ``members`` names every model with a probability column and its sha256.
    A part's members are the models with probabilities for its studies.
    ``precision`` and ``tta`` say how the studies were scored (recorded; ``score``
    refuses to apply the ensemble to another precision or TTA; None = unknown).
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
    pooling = fit_pooling(table, tuple(m.name for m in members), settings)
    plain_all = pool(table.P, np.zeros(len(members)))
    global_cal = fit_calibrator(plain_all, table.y, settings.calibrate, shrink_factor(len(table.y), settings.shrinkage))
    q = global_cal.apply(plain_all)  # what each fitting study gets from the ensemble; fitted parts below
    reasons = {p: _plain_reason(table.y[table.part == p], settings) for p in table.part_members if p}
    lams, tau2_w = part_shrinkage(pooling, [p for p, r in reasons.items() if not r], settings)
    fits: dict[str, PartFit] = {}
    for part, reason in reasons.items():
        rows = table.part == part
        P = table.P[np.ix_(rows, table.part_members[part])]
        if reason:
            if pooling.kept:
                q[rows] = pool(P, pooling.prior(table.part_members[part]))
            continue
        fits[part] = guarded_part(pooling, part, lams[part], settings)
        q[rows] = fits[part].final().apply(P)
    glob = _global_threshold(table, q, settings)
    tau2 = _between_parts(table.y, q, table.part, list(fits), glob.threshold, settings)
    parts: dict[str, PartModel] = {}
    oof = (np.full(len(table.y), np.nan), np.full(len(table.y), -1, dtype=np.int64))
    for part, reason in reasons.items():
        names = [members[j].name for j in table.part_members[part]]
        if part in fits:
            parts[part], used = _fitted_part(table, part, names, (fits[part], q, glob, tau2, pooling.oof), settings)
        else:
            parts[part], used = _small_part(table, part, names, (pooling, global_cal, glob.threshold, reason), settings)
        oof[0][table.part == part], oof[1][table.part == part] = used
    pooled_record = {**pooling.to_dict(), "tau2": tau2_w}
    return FittedEnsemble(
        members=members,
        parts=parts,
        global_calibrator=global_cal,
        global_threshold=glob.threshold,
        settings=settings,
        fitting=_fitting_record(table),
        mura_ens_version=__version__,
        notes=tuple(_global_notes(table, pooling, glob)),
        global_info={**glob.info, "pooling": pooled_record},
        precision=precision,
        tta=tta,
        out_of_fold=_out_of_fold(table, oof),
    )


def _out_of_fold(table: FittingTable, oof: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    """The fitting studies with what the table's "used" CV columns are computed from: out-of-fold prob and pred."""
    known = table.part != ""
    return pd.DataFrame(
        {
            "study": table.study[known],
            "patient": table.patient[known],
            "body_part": table.part[known],
            "label": table.y[known],
            "prob": oof[0][known],
            "pred": oof[1][known],
        }
    )


def _global_notes(table: FittingTable, pooling: Pooling, glob: _Global) -> list[str]:
    """The fit's notes: studies left out, the pooled weights' verdict, roles dropped, the global threshold."""
    notes = list(table.notes)
    guard = pooling.guard
    if guard.get("fitted_cv"):
        cv, plain = guard["fitted_cv"]["log_loss"], guard["plain"]["log_loss"]
        verdict_text = "kept" if pooling.kept else f"not kept ({verdict(guard)})"
        notes.append(f"Pooled weights {verdict_text}: CV log loss {cv:.3f} vs plain mean {plain:.3f}, all parts.")
    for drop in pooling.fit.dropped:
        notes.append(f"Pooled fit dropped {drop['role']} (likelihood ratio {drop['lr']:.2f} < 2.71).")
    if "note" in glob.info:
        notes.append(glob.info["note"])
    if "" in table.part_members:
        n = int(np.sum(table.part == ""))
        notes.append(f"{n} stud{'y' if n == 1 else 'ies'} of unknown body part: global calibrator and threshold only.")
    return notes


def _plain_reason(y: np.ndarray, settings: FitSettings) -> str:
    if len(y) < settings.min_studies:
        return f"{len(y)} labelled studies < --min-studies {settings.min_studies}"
    if len(np.unique(y)) < 2:
        which = "abnormal" if y[0] == 1 else "normal"
        return f"one class (all {len(y)} studies {which})"
    return ""


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
        info["note"] = _rejected_note("Global threshold", guard, rule, t_plain)
    return _Global(float(threshold) if guard["kept"] else t_plain, guard["kept"], info)


def _rejected_note(what: str, guard: dict[str, Any], rule: str, t_plain: float) -> str:
    cv, plain = guard["fitted_cv"], guard["plain"]
    if cv is None or plain is None:
        return f"{what} not judged (too few patients of a class for CV): {t_plain:g} used."
    return f"{what} not kept: CV {criterion(rule)} {cv:.3f} vs {plain:.3f} at {t_plain:g}, {verdict(guard)}."


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
    part_fit: PartFit,
    others: tuple[np.ndarray, np.ndarray, _Global, float],
    settings: FitSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (probabilities, predictions) of the part's procedure (its chosen weights + own threshold).

    Each fold refits on the other folds (the pooled prior too, without the
    fold's studies); the threshold's prior is the global threshold of the other
    parts' studies and the training folds (``plain_threshold`` when the global
    guard rejected the global threshold).
    """
    other_y, other_q, glob, tau2 = others
    oof_q = np.full(len(y), np.nan)
    oof_pred = np.zeros(len(y), dtype=np.int64)
    for k, (train, test) in enumerate(part_fit.folds):
        fit = part_fit.chosen(P[train], y[train], k, settings)
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
    y: np.ndarray, plain: np.ndarray, oof: tuple[np.ndarray, np.ndarray], part_fit: PartFit, settings: FitSettings
) -> dict[str, Any]:
    """Keep the part's own threshold only if its CV criterion beats both the plain mean and the chosen weights at
    ``plain_threshold`` by more than noise (the paired patient bootstrap of
    :mod:`~mura_ens.fitting.significance`, on the better of the two per resample).

    The weights are not dropped for a kappa loss at ``plain_threshold``: they are judged by the log loss they are
    fitted for (pooled guard, part guard, harm check); a kappa loss at a fixed cut is the threshold's business
    (with a useless member in the plain mean, its pull toward 0.5 is a shifted cut, not a better ranking)."""
    rule, t_plain = settings.threshold_rule, settings.plain_threshold
    oof_q, oof_pred = oof
    weighted = part_fit.source != PLAIN
    plain_value = rule_value(y, plain > t_plain, rule)
    at_plain = rule_value(y, oof_q > t_plain, rule) if weighted and part_fit.folds else plain_value
    fitted = rule_value(y, oof_pred, rule) if part_fit.folds else None
    guard: dict[str, Any] = {"criterion": criterion(rule), "plain": plain_value}
    guard.update({"weights_at_plain_threshold_cv": at_plain, "fitted_cv": fitted})
    if rule == "fixed":
        guard["kept"] = True
        return guard
    if plain_value is None or at_plain is None or fitted is None:
        guard["kept"] = False
        return guard
    counts = part_fit.resamples
    best_plain = resampled_rule_value(y, plain > t_plain, counts, rule)
    if weighted:
        best_plain = np.fmax(best_plain, resampled_rule_value(y, oof_q > t_plain, counts, rule))
    guard.update(
        judge(fitted - max(plain_value, at_plain), resampled_rule_value(y, oof_pred, counts, rule) - best_plain)
    )
    return guard


def _member_quality(P: np.ndarray, y: np.ndarray, names: list[str], settings: FitSettings) -> dict[str, Any]:
    t = settings.plain_threshold
    return {name: quality(y, P[:, j], P[:, j] > t) for j, name in enumerate(names)}


def _fitted_part(
    table: FittingTable,
    part: str,
    names: list[str],
    fitted: tuple[PartFit, np.ndarray, _Global, float, np.ndarray],
    settings: FitSettings,
) -> tuple[PartModel, tuple[np.ndarray, np.ndarray]]:
    """A part with enough studies of both classes: the weights it uses, its threshold, what CV measured, and the
    out-of-fold (prob, pred) of what it uses (the plain mean's own when CV was impossible)."""
    part_fit, q, glob, tau2, pooled_oof = fitted
    rows = table.part == part
    cols = table.part_members[part]
    P, y = table.P[np.ix_(rows, cols)], table.y[rows]
    raw, threshold, lam_t = _part_threshold(y, q[rows], (glob.threshold, tau2), settings)
    oof = _cross_validate(P, y, part_fit, (table.y[~rows], q[~rows], glob, tau2), settings)
    plain = pool(P, np.zeros(len(cols)))
    tg = _threshold_guard(y, plain, oof, part_fit, settings)
    source = part_fit.source
    chosen = part_fit.final() if source != PLAIN else fixed_probabilities(plain_weights(len(cols)))
    t_used = float(threshold if tg["kept"] else settings.plain_threshold)
    used_q = oof[0] if source != PLAIN else plain
    if not part_fit.folds and source == POOLED:  # no CV inside the part: the pooled weights' CV over all studies
        used_q = pooled_oof[rows]
    used_pred = oof[1] if tg["kept"] else (used_q > settings.plain_threshold).astype(np.int64)
    measured: dict[str, Any] = {
        "folds": len(part_fit.folds),
        "plain": quality(y, plain, plain > settings.plain_threshold),
        "used_cv": quality(y, used_q, used_pred) if not np.isnan(used_q).any() else None,
        "members": _member_quality(P, y, names, settings),
    }
    info = {
        "weights_source": source,
        "weights_prior": dict(zip(names, map(float, part_fit.prior))),
        "weights_own": dict(zip(names, map(float, part_fit.fit.w_own))),
        "shrink": part_fit.fit.lam,
        "threshold_fitted": raw,
        "threshold_shrink": lam_t,
        "guard": {"weights": {**part_fit.guard, "source": source, "kept": source != PLAIN}, "threshold": tg},
        "quality": measured,
    }
    notes = _weights_notes(part_fit, source, tg) + _threshold_notes(raw, (threshold, glob.threshold), tg, settings)
    model = PartModel(
        status=part_status(source != PLAIN, bool(tg["kept"]) and settings.threshold_rule != "fixed"),
        weights=dict(zip(names, map(float, chosen.w))),
        calibrator=chosen.calibrator,
        threshold=t_used,
        n_studies=len(y),
        n_positive=int(y.sum()),
        info=info,
        notes=tuple(notes),
    )
    return model, (used_q, used_pred)


def _weights_notes(part_fit: PartFit, source: str, tg: dict[str, Any]) -> list[str]:
    """One short sentence on where the part's weights come from."""
    guard = part_fit.guard
    notes = [] if part_fit.folds else ["Too few patients of a class for cross-validation on this part."]
    if source == PART:
        prior = "pooled weights" if guard.get("source_prior") == POOLED else "plain mean"
        calibrated = "" if part_fit.fit.calibrator.method == "none" else ", calibrated"
        notes.append(f"Weights: {prior} + {part_fit.fit.lam:.2f} x this part's own fit{calibrated} (better in CV).")
    elif source == POOLED:
        notes.append("Weights: pooled across parts; this part's own fit was not significantly better.")
    elif (guard.get("harm") or {}).get("kept"):
        notes.append("Weights: plain mean; the pooled weights had a worse CV log loss on this part.")
    else:
        notes.append("Weights: plain mean; no weighting beat it significantly in CV.")
    return notes


def _threshold_notes(
    raw: float | None, thresholds: tuple[float, float], tg: dict[str, Any], settings: FitSettings
) -> list[str]:
    """One short sentence on the part's threshold (kept, or why not)."""
    threshold, t_global = thresholds
    if settings.threshold_rule == "fixed":
        return [f"Fixed threshold {settings.threshold:g}."]
    if raw is None:
        return [f"No {settings.threshold_rule} threshold on this part alone: {settings.plain_threshold:g} used."]
    if tg["kept"]:
        return [f"Own threshold {threshold:.3f} (part's {raw:.3f} shrunk toward global {t_global:.3f})."]
    if tg["fitted_cv"] is None:
        return [f"Own threshold {threshold:.3f} not judged (no CV): {settings.plain_threshold:g} used."]
    best = max(v for v in (tg["plain"], tg["weights_at_plain_threshold_cv"]) if v is not None)
    return [
        f"Own threshold {threshold:.3f} not kept: CV {tg['criterion']} {tg['fitted_cv']:.3f} vs {best:.3f}, "
        f"{verdict(tg)}."
    ]


def _small_part(
    table: FittingTable,
    part: str,
    names: list[str],
    fallback: tuple[Pooling, Calibrator, float, str],
    settings: FitSettings,
) -> tuple[PartModel, tuple[np.ndarray, np.ndarray]]:
    """A part with too few studies or one class: the pooled weights (when kept) or the plain mean; global threshold.

    Its out-of-fold probabilities are those of the pooled weights' CV over all studies (or the plain mean's)."""
    pooling, calibrator, t_global, reason = fallback
    rows = table.part == part
    cols = table.part_members[part]
    P, y = table.P[np.ix_(rows, cols)], table.y[rows]
    plain = pool(P, np.zeros(len(cols)))
    if pooling.kept:
        weights, calibrator, used_q = pooling.prior(cols), IDENTITY, pooling.oof[rows]
        note = f"{reason}: pooled weights, global threshold {t_global:.3f}."
    else:
        weights, used_q = plain_weights(len(cols)), calibrator.apply(plain)
        note = f"{reason}: plain mean, global threshold {t_global:.3f}."
    defined = not np.isnan(used_q).any()
    info = {
        "weights_source": POOLED if pooling.kept else PLAIN,
        "weights_prior": dict(zip(names, map(float, pooling.prior(cols)))),
        "weights_own": None,
        "shrink": 0.0,
        "threshold_fitted": None,
        "threshold_shrink": 0.0,
        "quality": {
            "folds": 0,
            "plain": quality(y, plain, plain > settings.plain_threshold),
            "used_cv": quality(y, used_q, used_q > t_global) if defined else None,
            "members": _member_quality(P, y, names, settings),
        },
    }
    model = PartModel(
        # a fitted global threshold is a threshold the part uses: the table must not call that the plain mean
        status=part_status(pooling.kept, abs(float(t_global) - settings.plain_threshold) > 1e-9),
        weights=dict(zip(names, map(float, weights))),
        calibrator=calibrator,
        threshold=float(t_global),
        n_studies=len(y),
        n_positive=int(y.sum()),
        info=info,
        notes=(note,),
    )
    return model, (used_q, (used_q > t_global).astype(np.int64))


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
