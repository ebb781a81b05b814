"""Binary classification metrics per body part, with bootstrap intervals.

Point estimates are computed in numpy on exactly the rows given, with the
same formulas as scikit-learn's ``cohen_kappa_score``, ``roc_auc_score`` and
``accuracy_score`` (the tests check them against scikit-learn to 1e-9);
scikit-learn is not imported, which keeps ~1 s of imports out of every
``mura-ens score`` process. Confidence intervals are seeded
percentile bootstraps computed for all resamples at once in numpy: AUC from
rank statistics (Mann-Whitney U with average ranks for ties) and kappa from
the 2x2 confusion counts of every resample.

A metric that is undefined on a group (AUC with one class, kappa when labels
and predictions are all one class, anything on an empty group) is ``None`` in
the returned dicts, so that it serialises to JSON ``null``; the one-class case
also emits an :class:`UndefinedMetricWarning` naming the group.

Study-level metrics use study probabilities = mean of the study's image
probabilities (:func:`study_probabilities`), as in the MURA paper.

The bootstrap is described once, by a :class:`BootstrapSettings`; the
``metrics.json`` structure is put together in one place, :func:`build_metrics`
(used by :func:`evaluate_predictions` and by scoring).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .errors import UsageError

__all__ = [
    "UndefinedMetricWarning",
    "GROUP_KEYS",
    "BootstrapSettings",
    "DEFAULT_BOOTSTRAP",
    "NO_BOOTSTRAP",
    "ModelColumn",
    "PartThresholds",
    "EnsembleInfo",
    "binary_metrics",
    "bootstrap_intervals",
    "resampled_auc",
    "resampled_kappa",
    "study_probabilities",
    "grouped_metrics",
    "build_metrics",
    "evaluate_predictions",
    "fold_undefined_warnings",
    "confusion_counts",
    "format_metric",
    "metrics_rows",
    "format_metrics_table",
]

#: Keys of one group's metrics (the ``GROUP`` of ``metrics.json``).
GROUP_KEYS: tuple[str, ...] = (
    "n",
    "n_positive",
    "kappa",
    "kappa_ci",
    "auc",
    "auc_ci",
    "accuracy",
    "sensitivity",
    "specificity",
)

#: Group name used for rows whose body part is empty or missing.
UNKNOWN_GROUP = "unknown"

#: Upper bound on resamples x rows held in memory at once by the bootstrap (1e6 cells: ~30 MB of
#: index and value arrays; 4e6 made peak RSS of a large scoring run grow with its size).
_BOOTSTRAP_CELLS = 1_000_000


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on a group (e.g. ROC AUC when only one class is present).

    A ``UserWarning``, as scikit-learn's warning of the same name (which it no
    longer subclasses: importing scikit-learn costs ~1 s of every scoring run).
    """


@dataclass(frozen=True)
class BootstrapSettings:
    """How the percentile bootstrap intervals of kappa and ROC AUC are drawn (``metrics.json``'s ``bootstrap``).

    ``n_resamples`` resamples (0 = no intervals) at confidence level ``ci``, drawn with ``seed``;
    the same settings on the same rows give the same intervals. Validated on construction: a bad
    value is a :class:`~mura_ens.errors.UsageError` naming it.

    The decision threshold is deliberately not part of it: it moves the point estimates as well
    as the intervals, and scoring takes it from the models.
    """

    n_resamples: int = 1000
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        n, ci, seed = self.n_resamples, self.ci, self.seed
        if not _is_integer(n) or n < 0:
            raise UsageError(f"number of bootstrap resamples must be an integer >= 0, got {n!r}")
        if not isinstance(ci, numbers.Real) or not 0.0 <= ci < 1.0:
            raise UsageError(f"confidence level must be in [0, 1), got {ci!r}")
        if not _is_integer(seed) or seed < 0:
            raise UsageError(f"bootstrap seed must be an integer >= 0, got {seed!r}")

    def to_json(self) -> dict[str, Any]:
        """``{"n_resamples", "ci", "seed"}`` as written in ``metrics.json``."""
        return {"n_resamples": int(self.n_resamples), "ci": float(self.ci), "seed": int(self.seed)}


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: 1000 resamples, 95% intervals, seed 0: what ``mura-ens score`` and ``evaluate`` use by default.
DEFAULT_BOOTSTRAP = BootstrapSettings()
#: No intervals (point estimates only).
NO_BOOTSTRAP = BootstrapSettings(n_resamples=0)


# --------------------------------------------------------------------------
# Vectorised resampled metrics
# --------------------------------------------------------------------------


def resampled_auc(y_true: ArrayLike, y_prob: ArrayLike, indices: np.ndarray) -> np.ndarray:
    """ROC AUC of every resample at once.

    Parameters
    ----------
    y_true : array of shape (n,)
        0/1 labels.
    y_prob : array of shape (n,)
        Scores; ties get average ranks (the Mann-Whitney U convention,
        identical to scikit-learn's ``roc_auc_score``).
    indices : int array of shape (n_resamples, m)
        Row indices of each resample (``np.arange(n)[None]`` = the data itself).

    Returns
    -------
    ndarray of shape (n_resamples,)
        AUC per resample; NaN where a resample holds only one class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    indices = np.asarray(indices)
    n_resamples = indices.shape[0]
    # Rank statistics on the distinct score values: per resample, count the
    # positives and negatives at each value, then
    # U = sum_v pos(v) * (neg(< v) + neg(= v) / 2), in exact integers as 2U.
    _, value_of_row = np.unique(np.asarray(y_prob, dtype=np.float64), return_inverse=True)
    n_values = int(value_of_row.max()) + 1 if value_of_row.size else 0
    code = 2 * value_of_row.ravel() + y_true  # (value, class) of each row
    key = code[indices] + 2 * n_values * np.arange(n_resamples)[:, None]
    counts = np.bincount(key.ravel(), minlength=2 * n_values * n_resamples)
    counts = counts.reshape(n_resamples, n_values, 2)
    neg, pos = counts[..., 0], counts[..., 1]
    twice_u = (pos * (2 * np.cumsum(neg, axis=1) - neg)).sum(axis=1)
    n_pos = pos.sum(axis=1)
    n_neg = neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = twice_u / (2.0 * n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def resampled_kappa(y_true: ArrayLike, y_pred: ArrayLike, indices: np.ndarray) -> np.ndarray:
    """Cohen's kappa of every resample at once, from its 2x2 confusion counts.

    Parameters are as in :func:`resampled_auc`, with ``y_pred`` the 0/1
    predictions. Returns NaN where kappa is undefined (chance agreement of
    1, i.e. labels and predictions all of one and the same class), as
    scikit-learn's ``cohen_kappa_score`` does.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    indices = np.asarray(indices)
    n_resamples = indices.shape[0]
    cell = 2 * y_true + y_pred  # 0 tn, 1 fp, 2 fn, 3 tp
    key = (cell[indices] + 4 * np.arange(n_resamples)[:, None]).ravel()
    counts = np.bincount(key, minlength=4 * n_resamples).reshape(n_resamples, 4).astype(np.float64)
    tn, fp, fn, tp = counts.T
    n = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # kappa = 1 - observed disagreement / disagreement expected by chance
        expected = ((tn + fp) * (fp + tp) + (fn + tp) * (tn + fn)) / n
        kappa = 1.0 - (fp + fn) / expected
    kappa[~(expected > 0)] = np.nan
    return kappa


def bootstrap_intervals(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    threshold: float | np.ndarray = 0.5,
    bootstrap: BootstrapSettings = DEFAULT_BOOTSTRAP,
) -> dict[str, list[float | None]]:
    """Seeded percentile bootstrap intervals for kappa and ROC AUC.

    Predictions are ``y_prob > threshold`` (a scalar, or one threshold per row
    that travels with its row). Rows are resampled with replacement (the same resamples for both
    metrics). Resamples where a metric is undefined (one class for AUC) are
    dropped from that metric's interval. Resamples are drawn in chunks to
    bound memory; the result depends only on the data and ``bootstrap``.

    Returns
    -------
    dict
        ``{"kappa_ci": [lo, hi], "auc_ci": [lo, hi]}``; ``[None, None]`` when
        no resample defines the metric or ``bootstrap.n_resamples`` is 0.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    n = y_true.shape[0]
    n_resamples = bootstrap.n_resamples
    if n == 0 or n_resamples <= 0:
        return {"kappa_ci": [None, None], "auc_ci": [None, None]}
    y_pred = (y_prob > threshold).astype(np.int64)
    rng = np.random.default_rng(bootstrap.seed)
    chunk = max(1, min(n_resamples, _BOOTSTRAP_CELLS // n))
    kappas, aucs = [], []
    for start in range(0, n_resamples, chunk):
        indices = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        kappas.append(resampled_kappa(y_true, y_pred, indices))
        aucs.append(resampled_auc(y_true, y_prob, indices))
    alpha = (1.0 - bootstrap.ci) / 2.0
    return {
        "kappa_ci": _percentile_interval(np.concatenate(kappas), alpha),
        "auc_ci": _percentile_interval(np.concatenate(aucs), alpha),
    }


def _percentile_interval(values: np.ndarray, alpha: float) -> list[float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [None, None]
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


# --------------------------------------------------------------------------
# One group
# --------------------------------------------------------------------------


def binary_metrics(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    threshold: float | np.ndarray = 0.5,
    bootstrap: BootstrapSettings = DEFAULT_BOOTSTRAP,
    group: str | None = None,
) -> dict[str, Any]:
    """Kappa, ROC AUC, accuracy, sensitivity and specificity of one group.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels, 1 abnormal / 0 normal.
    y_prob : array-like of shape (n,)
        Probabilities of abnormality (finite).
    threshold : float or array of shape (n,)
        Prediction is ``y_prob > threshold`` (strictly greater); an array gives
        each row its own threshold (a fitted ensemble's per-part thresholds).
    bootstrap : BootstrapSettings
        Resamples, confidence level and seed of the kappa and AUC intervals.
    group : str, optional
        Name of the group, used in warnings.

    Returns
    -------
    dict
        ``n``, ``n_positive`` (ints), ``kappa``, ``auc``, ``accuracy``,
        ``sensitivity``, ``specificity`` (floats, or None where undefined)
        and ``kappa_ci``, ``auc_ci`` (``[lo, hi]`` lists of floats or None).
        AUC is None with one class present (with an
        :class:`UndefinedMetricWarning`); kappa is None when labels and
        predictions are all the same class; everything but ``n`` is None on
        an empty group.
    """
    name = group or "all rows"
    y_true, y_prob = _checked_arrays(y_true, y_prob, name)
    n = int(y_true.shape[0])
    n_positive = int(y_true.sum())
    result: dict[str, Any] = {
        "n": n,
        "n_positive": n_positive,
        "kappa": None,
        "kappa_ci": [None, None],
        "auc": None,
        "auc_ci": [None, None],
        "accuracy": None,
        "sensitivity": None,
        "specificity": None,
    }
    if n == 0:
        return result
    result.update(_point_estimates(y_true, (y_prob > threshold).astype(np.int64)))
    one_class = n_positive in (0, n)
    if one_class:
        warnings.warn(
            f"{name}: only one class present (label={int(y_true[0])}, n={n}); ROC AUC is undefined",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    else:
        result["auc"] = float(resampled_auc(y_true, y_prob, np.arange(n)[None, :])[0])
    intervals = bootstrap_intervals(y_true, y_prob, threshold=threshold, bootstrap=bootstrap)
    if result["kappa"] is not None:
        result["kappa_ci"] = intervals["kappa_ci"]
    if not one_class:
        result["auc_ci"] = intervals["auc_ci"]
    return result


def _checked_arrays(y_true: ArrayLike, y_prob: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels as int64, probabilities as float64)``; ValueError naming ``name`` for unusable input."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 1 or y_prob.ndim != 1 or y_true.shape != y_prob.shape:
        raise ValueError(f"y_true and y_prob must be 1-d of equal length, got shapes {y_true.shape} and {y_prob.shape}")
    if not np.all(np.isfinite(y_prob)):
        bad = y_prob[~np.isfinite(y_prob)][:5].tolist()
        raise ValueError(f"y_prob must be finite ({name}), got {bad}")
    bad_labels = sorted(set(np.unique(y_true).tolist()) - {0, 1})
    if bad_labels:
        raise ValueError(f"y_true must hold only 0 and 1 ({name}), got {bad_labels[:5]}")
    return y_true.astype(np.int64), y_prob


def _point_estimates(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    """Kappa, accuracy, sensitivity and specificity of a non-empty group (None where undefined)."""
    n = int(y_true.shape[0])
    n_positive = int(y_true.sum())
    tp = int(np.sum((y_true == 1) & (y_pred == 1)))
    tn = int(np.sum((y_true == 0) & (y_pred == 0)))
    kappa = float(resampled_kappa(y_true, y_pred, np.arange(n)[None, :])[0])  # NaN where undefined: None
    return {
        "kappa": kappa if np.isfinite(kappa) else None,
        "accuracy": float(np.mean(y_true == y_pred)),
        "sensitivity": tp / n_positive if n_positive else None,
        "specificity": tn / (n - n_positive) if n - n_positive else None,
    }


def confusion_counts(group: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """``(tn, fp, fn, tp)`` of a GROUP of ``metrics.json``, from its ``n``, ``n_positive``, sensitivity and specificity.

    Exact: sensitivity is ``tp / n_positive`` and specificity ``tn / n_negative``, so rounding
    their products with the class sizes gives the counts back.
    """
    n, n_positive = int(group.get("n") or 0), int(group.get("n_positive") or 0)
    n_negative = n - n_positive
    tp = round(group["sensitivity"] * n_positive) if n_positive else 0
    tn = round(group["specificity"] * n_negative) if n_negative else 0
    return tn, n_negative - tn, n_positive - tp, tp


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def study_probabilities(
    images: pd.DataFrame, *, prob_cols: Iterable[str] = ("prob",), study_col: str = "study"
) -> pd.DataFrame:
    """Aggregate image rows to study rows: study probability = mean of image probabilities.

    NaN probabilities (images that could not be scored) are ignored; a study
    with no valid probability gets NaN. ``patient`` and ``body_part`` (first
    value) and ``label`` (first non-missing value) are kept when present;
    ``n_images`` counts the study's image rows, scored or not. Studies keep
    their order of first appearance.

    Raises
    ------
    UsageError
        When a column is missing or a study's images carry different labels.
    """
    prob_cols = list(prob_cols)
    missing = [c for c in (study_col, *prob_cols) if c not in images.columns]
    if missing:
        raise UsageError(f"image table is missing column(s): {', '.join(missing)}")
    grouped = images.groupby(study_col, sort=False, dropna=False)
    out = pd.DataFrame({"n_images": grouped.size()})
    for col in ("patient", "body_part"):
        if col in images.columns:
            out[col] = grouped[col].first()
    if "label" in images.columns:
        n_labels = grouped["label"].nunique(dropna=True)
        conflicting = n_labels.index[n_labels > 1].tolist()
        if conflicting:
            shown = ", ".join(map(str, conflicting[:5]))
            more = f" and {len(conflicting) - 5} more" if len(conflicting) > 5 else ""
            raise UsageError(f"images of one study have different labels: {shown}{more}")
        out["label"] = grouped["label"].first()
    for col in prob_cols:
        out[col] = pd.to_numeric(images[col]).groupby(images[study_col], sort=False, dropna=False).mean()
    out = out.rename_axis(study_col).reset_index()
    order = [study_col] + [c for c in ("patient", "body_part", "n_images", "label") if c in out.columns] + prob_cols
    return out[order]


def grouped_metrics(
    frame: pd.DataFrame,
    *,
    prob_col: str = "prob",
    label_col: str = "label",
    group_col: str = "body_part",
    threshold: float | PartThresholds = 0.5,
    bootstrap: BootstrapSettings = DEFAULT_BOOTSTRAP,
    name: str | None = None,
) -> dict[str, Any]:
    """Metrics overall and per body part: ``{"overall": GROUP, "by_body_part": {part: GROUP}}``.

    ``threshold`` is one threshold for every row, or a :class:`PartThresholds`
    (each row predicted with its body part's threshold: one per part group,
    mixed in ``overall``).

    Rows with a missing label or a missing probability are left out of the
    metrics; each GROUP counts them in ``n_excluded``. Every body part
    present in ``frame`` gets an entry (sorted by name), even one whose rows
    are all excluded (then ``n`` is 0 and the metrics None); an empty body
    part is reported as ``"unknown"``. ``name`` (e.g. ``"study"``) prefixes
    group names in warnings. Each group is bootstrapped with the same
    settings, so a group's interval does not depend on the other groups.
    """
    missing = [c for c in (prob_col, label_col) if c not in frame.columns]
    if missing:
        raise UsageError(f"table is missing column(s): {', '.join(missing)}")
    labels = pd.to_numeric(frame[label_col]).to_numpy(dtype=np.float64, na_value=np.nan)
    probs = pd.to_numeric(frame[prob_col]).to_numpy(dtype=np.float64, na_value=np.nan)
    valid = np.isfinite(labels) & np.isfinite(probs)
    if group_col in frame.columns:
        parts = frame[group_col].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    else:
        parts = np.full(len(frame), "", dtype=object)
    thresholds = threshold.for_parts(parts) if isinstance(threshold, PartThresholds) else None
    scalar = threshold.default if isinstance(threshold, PartThresholds) else float(threshold)
    parts[parts == ""] = UNKNOWN_GROUP
    prefix = f"{name} " if name else ""

    def one(mask: np.ndarray, group: str) -> dict[str, Any]:
        keep = mask & valid
        cut = scalar if thresholds is None else thresholds[keep]
        result = binary_metrics(labels[keep], probs[keep], threshold=cut, bootstrap=bootstrap, group=prefix + group)
        result["n_excluded"] = int(np.sum(mask & ~valid))
        return result

    everything = np.ones(len(frame), dtype=bool)
    return {
        "overall": one(everything, "overall"),
        "by_body_part": {part: one(parts == part, part) for part in sorted(set(parts.tolist()))},
    }


@dataclass(frozen=True)
class ModelColumn:
    """A model's own probability ``column``, reported under ``metrics.json``'s ``models[name]``.

    ``body_parts``: the parts the model serves; its metrics use only rows of those parts
    (empty = every row, a generalist).
    """

    name: str
    column: str
    body_parts: tuple[str, ...] = ()

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` this model is judged on."""
        return frame if not self.body_parts else frame.loc[frame["body_part"].isin(self.body_parts)]


@dataclass(frozen=True)
class PartThresholds:
    """One decision threshold per body part (a fitted ensemble's), ``default`` for every other part.

    Rows of a part listed in ``by_part`` are predicted abnormal when
    ``prob > by_part[part]``; rows of any other part, and of unknown part
    (``""``), when ``prob > default``.
    """

    by_part: Mapping[str, float]
    default: float

    def for_parts(self, parts: Iterable[Any]) -> np.ndarray:
        """The threshold of each row, from its body part."""
        table = {str(k): float(v) for k, v in self.by_part.items()}
        default = float(self.default)
        return np.array([table.get("" if p is None else str(p).strip(), default) for p in parts], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """``{"by_body_part": {part: threshold}, "default": threshold}`` as written in ``metrics.json``."""
        return {
            "by_body_part": {str(k): float(v) for k, v in sorted(self.by_part.items())},
            "default": float(self.default),
        }


@dataclass(frozen=True)
class EnsembleInfo:
    """The ensemble column of a scoring run, as :func:`build_metrics` reports it.

    ``name`` is written as ``ensemble``; ``thresholds``, when given, are the
    per-part thresholds of the ensemble's own predictions (``ensemble_thresholds``;
    the models keep the scalar ``threshold``); ``details`` are further top-level
    facts about how the column was made (``ensemble_file``, ``tta``), written as
    given; ``baselines`` are other combinations of the same models (e.g. the
    plain ``body_part`` mean next to a fitted ensemble) reported under
    ``baselines`` at the scalar threshold.
    """

    name: str
    thresholds: PartThresholds | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    baselines: tuple[ModelColumn, ...] = ()


def build_metrics(
    studies: pd.DataFrame,
    images: pd.DataFrame | None = None,
    *,
    threshold: float = 0.5,
    bootstrap: BootstrapSettings = DEFAULT_BOOTSTRAP,
    prob_col: str = "prob",
    ensemble: str | EnsembleInfo | None = None,
    models: Sequence[ModelColumn] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` structure (docs/INTERNALS.md): the one place it is put together.

    ``studies`` (and ``images``, when given) are prepared tables: ``body_part``,
    ``label`` (1, 0 or missing) and probabilities in [0, 1] or missing; every image row
    given counts. Keys, in order: ``threshold``, ``ensemble`` (when given; an
    :class:`EnsembleInfo` adds ``ensemble_thresholds`` and its ``details``),
    ``bootstrap``, ``study``, ``image`` (with ``images``), ``models`` (when given:
    each model's ``study``/``image`` levels on its own column and body parts),
    ``baselines`` (an :class:`EnsembleInfo`'s, when it has some).
    The ensemble's predictions use ``ensemble.thresholds`` when given, else ``threshold``.
    """
    levels = {"study": studies} if images is None else {"study": studies, "image": images}
    info = EnsembleInfo(ensemble) if isinstance(ensemble, str) else ensemble

    def both(
        column: str,
        rows: Callable[[pd.DataFrame], pd.DataFrame] = lambda frame: frame,
        prefix: str = "",
        cut: Any = threshold,
    ) -> dict[str, Any]:
        return {
            level: grouped_metrics(
                rows(frame), prob_col=column, threshold=cut, bootstrap=bootstrap, name=prefix + level
            )
            for level, frame in levels.items()
        }

    result: dict[str, Any] = {"threshold": float(threshold)}
    if info is not None:
        result["ensemble"] = info.name
        if info.thresholds is not None:
            result["ensemble_thresholds"] = info.thresholds.to_json()
        result.update(info.details)
    result["bootstrap"] = bootstrap.to_json()
    result.update(both(prob_col, cut=threshold if info is None or info.thresholds is None else info.thresholds))
    if models is not None:
        result["models"] = {m.name: both(m.column, m.rows, f"{m.name} ") for m in models}
    if info is not None and info.baselines:
        result["baselines"] = {b.name: both(b.column, b.rows, f"{b.name} ") for b in info.baselines}
    return result


def evaluate_predictions(
    frame: pd.DataFrame,
    *,
    threshold: float | PartThresholds = 0.5,
    prob_col: str = "prob",
    bootstrap: BootstrapSettings = DEFAULT_BOOTSTRAP,
    images: pd.DataFrame | None = None,
    models: Sequence[ModelColumn] | None = None,
    baselines: Sequence[ModelColumn] = (),
) -> dict[str, Any]:
    """The ``metrics.json`` structure for a table of study or image predictions (:func:`build_metrics`).

    ``frame`` needs ``study``, ``body_part``, ``label`` and ``prob_col``.
    With a ``path`` column the rows are images: image-level metrics come
    from the rows, study-level ones from :func:`study_probabilities`; image
    rows whose ``status`` (when present) is neither ``ok`` nor empty count as
    unscored. Without ``path`` the rows are studies. Empty probabilities
    (failed studies) and empty labels are excluded and counted in
    ``n_excluded``. A :class:`PartThresholds` ``threshold`` (a fitted
    ensemble's) predicts each row with its body part's threshold; the result
    then says so as a scoring run's ``metrics.json`` does (``ensemble``
    ``fitted``, ``ensemble_thresholds``), with the models' default 0.5 as ``threshold``.
    ``images``: the image rows beside a study table (a scoring run's ``images.csv``), for the
    image level; ``models``: each model's own column (``models`` section); ``baselines``: other
    combinations reported beside a fitted ensemble (``baselines`` section), as ``score`` writes them.

    Returns
    -------
    dict
        ``{"threshold", "bootstrap": {"n_resamples", "ci", "seed"},
        "study": {"overall", "by_body_part"}, "image": {...}}``, ``image``
        only for image rows.

    Raises
    ------
    UsageError
        Missing columns, labels other than 0/1, probabilities that are not
        numbers in [0, 1], a threshold outside [0, 1].
    """
    required = ("study", "body_part", "label", prob_col)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UsageError(f"predictions are missing column(s): {', '.join(missing)}")
    per_part = threshold if isinstance(threshold, PartThresholds) else None
    # Beside per-part thresholds, the models (and baselines) keep the default 0.5, as in a `score --ensemble fitted`.
    scalar = 0.5 if isinstance(threshold, PartThresholds) else float(threshold)
    if not 0.0 <= scalar <= 1.0:
        raise UsageError(f"threshold must be in [0, 1], got {scalar}")
    columns = (prob_col, *(m.column for m in (*(models or ()), *baselines)))
    frame = _checked_frame(frame, columns)
    options: dict[str, Any] = dict(threshold=scalar, bootstrap=bootstrap, prob_col=prob_col, models=models)
    if per_part is not None:
        options["ensemble"] = EnsembleInfo("fitted", thresholds=per_part, baselines=tuple(baselines))
    if "path" not in frame.columns:
        if images is not None:
            images = _counted_image_rows(_checked_frame(images, columns), columns)
        return build_metrics(frame, images, **options)
    frame = _counted_image_rows(frame, columns)
    return build_metrics(study_probabilities(frame, prob_cols=columns), frame, **options)


def _checked_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy with ``label`` and every probability column checked (:class:`UsageError` otherwise)."""
    frame = frame.copy()
    frame["label"] = _checked_labels(frame["label"])
    for column in dict.fromkeys(columns):
        frame[column] = _checked_probabilities(frame[column], column)
    return frame


def _counted_image_rows(frame: pd.DataFrame, prob_cols: Sequence[str]) -> pd.DataFrame:
    """Image rows with unscored ones' probabilities blanked; rows outside any study dropped."""
    if "status" in frame.columns:
        status = frame["status"].astype("string").fillna("").str.strip()
        unscored = ~status.isin(["", "ok"])
        frame.loc[unscored, list(dict.fromkeys(prob_cols))] = np.nan
        # Files the scan skipped outside any study folder (a stray README.txt) have no
        # study key; they are listed in images.csv but take no part in the metrics.
        frame = frame.loc[~(unscored & frame["study"].isna())]
    if frame["study"].isna().any():
        rows = [int(i) + 2 for i in frame.index[frame["study"].isna()][:5]]
        raise UsageError(f"image rows without a study key (CSV lines {rows}) cannot be aggregated to studies")
    return frame


@contextmanager
def fold_undefined_warnings(limit: int = 6) -> Iterator[None]:
    """Fold the block's :class:`UndefinedMetricWarning` warnings into one that lists the groups.

    One warning per one-class group would be dozens of lines (levels x models x parts);
    other warnings pass through unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        yield
    undefined = []
    for w in caught:
        if issubclass(w.category, UndefinedMetricWarning):
            undefined.append(str(w.message).split(":")[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if undefined:
        shown = "; ".join(undefined[:limit])
        if len(undefined) > limit:
            shown += f"; ... {len(undefined) - limit} more"
        warnings.warn(
            f"ROC AUC is undefined (only one class) in {len(undefined)} groups, null in metrics.json: {shown}",
            UndefinedMetricWarning,
            stacklevel=3,
        )


def _checked_labels(labels: pd.Series) -> pd.Series:
    text = labels.astype("string").str.strip().mask(lambda s: s == "")
    numeric = pd.to_numeric(text, errors="coerce")
    bad = numeric.isna() & labels.notna() & (labels.astype("string").str.strip() != "")
    bad |= numeric.notna() & ~numeric.isin([0, 1])
    if bad.any():
        values = labels[bad].astype("string").unique().tolist()[:5]
        raise UsageError(f"column 'label' must hold 1, 0 or nothing; found {values}")
    return numeric.astype("Int64")


def _checked_probabilities(probs: pd.Series, column: str) -> pd.Series:
    text = probs.astype("string").str.strip().mask(lambda s: s == "")
    numeric = pd.to_numeric(text, errors="coerce").astype("Float64")
    not_numbers = numeric.isna() & text.notna()
    if not_numbers.any():
        values = probs[not_numbers].astype("string").unique().tolist()[:5]
        raise UsageError(f"column '{column}' must hold probabilities, found {values}")
    outside = numeric.notna() & ((numeric < 0) | (numeric > 1))
    if outside.any():
        values = numeric[outside].unique().tolist()[:5]
        raise UsageError(f"column '{column}' must hold probabilities in [0, 1], found {values}")
    return numeric


# --------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------

#: (key, header) of the columns of a metrics table, in order.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("group", "body part"),
    ("n", "n"),
    ("n_positive", "abn."),
    ("kappa", "kappa [CI]"),
    ("auc", "AUC [CI]"),
    ("accuracy", "acc."),
    ("sensitivity", "sens."),
    ("specificity", "spec."),
)


def format_metric(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    """A metric for display: ``0.712``; ``missing`` for an undefined one (None or NaN)."""
    return missing if value is None or value != value else f"{value:.{digits}f}"


def _fmt_ci(value: float | None, interval: Sequence[float | None] | None, sep: str) -> str:
    text = format_metric(value)
    lo, hi = (list(interval) + [None, None])[:2] if interval is not None else (None, None)
    if value is None or lo is None or hi is None:
        return text
    return f"{text} [{lo:.3f}{sep}{hi:.3f}]"


def metrics_rows(level: Mapping[str, Any], *, ci_sep: str = ", ") -> list[dict[str, str]]:
    """Display strings of a level (``{"overall", "by_body_part"}``): one row per body part, then overall.

    Each row maps the keys of :data:`TABLE_COLUMNS` (and ``n_excluded``) to
    text; undefined values read ``n/a``; intervals read ``0.712 [0.650, 0.770]``
    (``ci_sep`` between the bounds).
    """

    def row(group: str, m: dict[str, Any]) -> dict[str, str]:
        return {
            "group": group,
            "n": str(m.get("n", 0)),
            "n_positive": str(m.get("n_positive", 0)),
            "kappa": _fmt_ci(m.get("kappa"), m.get("kappa_ci"), ci_sep),
            "auc": _fmt_ci(m.get("auc"), m.get("auc_ci"), ci_sep),
            "accuracy": format_metric(m.get("accuracy")),
            "sensitivity": format_metric(m.get("sensitivity")),
            "specificity": format_metric(m.get("specificity")),
            "n_excluded": str(m.get("n_excluded", 0)),
        }

    rows = [row(part, m) for part, m in sorted(level.get("by_body_part", {}).items())]
    if "overall" in level:
        rows.append(row("overall", level["overall"]))
    return rows


def format_metrics_table(level: dict[str, Any], *, title: str = "Study-level metrics") -> Any:
    """A ``rich.table.Table`` of a level (``{"overall", "by_body_part"}``) of ``metrics.json``.

    One row per body part and an overall row; a caption counts the rows left
    out for lack of a label or a probability, when there are any.
    """
    from rich import box
    from rich.table import Table

    # No space inside intervals: on a narrow terminal a cell wraps into two
    # lines, point estimate above its interval.
    rows = metrics_rows(level, ci_sep=",")
    excluded = [(r["group"], r["n_excluded"]) for r in rows if r["n_excluded"] != "0"]
    caption = None
    if excluded:
        total = excluded.pop() if excluded[-1][0] == "overall" else None
        parts = ", ".join(f"{group} {n}" for group, n in excluded)
        caption = f"excluded (no label or no probability): {total[1] if total else ''} ({parts})"
    table = Table(
        title=title,
        title_justify="left",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for key, header in TABLE_COLUMNS:
        if key == "group":
            table.add_column(header, no_wrap=True, min_width=11)
        elif key in ("kappa", "auc"):
            table.add_column(header, justify="right", min_width=13)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for i, r in enumerate(rows):
        if r["group"] == "overall" and i > 0:
            table.add_section()
        table.add_row(*(r[key] for key, _ in TABLE_COLUMNS), style="bold" if r["group"] == "overall" else None)
    return table
