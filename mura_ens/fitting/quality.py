"""Study-level quality of a set of probabilities, and patient-grouped cross-validation folds."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .weights import log_loss


def quality(y: np.ndarray, p: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """``n``, ``n_positive``, ``log_loss``, ``brier``, ``auc``, ``kappa``, ``accuracy`` of one set of studies.

    ``auc`` and ``kappa`` are None with one class in ``y`` (scikit-learn's
    ``roc_auc_score`` / ``cohen_kappa_score`` otherwise); log loss clips p to [1e-6, 1 - 1e-6].
    """
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.int64)
    both = len(np.unique(y)) == 2
    return {
        "n": len(y),
        "n_positive": int(y.sum()),
        "log_loss": log_loss(y, p) if len(y) else None,
        "brier": float(np.mean((p - y) ** 2)) if len(y) else None,
        "auc": float(roc_auc_score(y, p)) if both else None,
        "kappa": float(cohen_kappa_score(y, pred)) if both else None,
        "accuracy": float(np.mean(pred == y)) if len(y) else None,
    }


def patient_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Label-stratified folds that keep each patient's studies together (scikit-learn ``StratifiedGroupKFold``).

    The number of folds is ``folds`` lowered to the number of patients and to
    the number of studies of the rarer class; an empty list when that is below 2.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y, dtype=np.int64)
    n_pos = int(y.sum())
    k = min(folds, len(np.unique(groups)), n_pos, len(y) - n_pos)
    if k < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups)]
