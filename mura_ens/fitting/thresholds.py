"""Decision thresholds by rule (kappa, Youden), and their shrinkage toward a global threshold.

A prediction is ``prob > threshold``, as everywhere in mura-ens. Candidate
thresholds are the midpoints between consecutive distinct probabilities, so
every distinct split of the studies is tried once and the chosen threshold
sits halfway between the two studies it separates. When several candidates
reach the best value, the middle one of them (by position) is taken.
"""

from __future__ import annotations

import numpy as np


def shrink_factor(n: int, k: float) -> float:
    """n / (n + k): the weight a part's own estimate gets against its prior (1 when k = 0)."""
    return 1.0 if k == 0 else n / (n + k)


def best_threshold(y: np.ndarray, q: np.ndarray, rule: str) -> float | None:
    """The threshold on ``q`` that maximises ``rule`` (``kappa`` or ``youden``) for labels ``y``.

    None when it cannot be chosen: one class in ``y``, or fewer than two
    distinct values in ``q``. Rows with a NaN probability are ignored.
    """
    y = np.asarray(y, dtype=np.int64)
    q = np.asarray(q, dtype=np.float64)
    keep = ~np.isnan(q)
    y, q = y[keep], q[keep]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(q, kind="stable")
    qs, ys = q[order], y[order]
    cut = np.flatnonzero(qs[1:] != qs[:-1])  # last index of each run of equal values but the top one
    if not len(cut):
        return None
    candidates = (qs[cut] + qs[cut + 1]) / 2.0
    # a midpoint that rounds up onto the upper value would flip it: take the lower value then
    candidates = np.where(candidates < qs[cut + 1], candidates, qs[cut])
    # studies at or below each candidate = predicted negative
    below_pos = np.cumsum(ys)[cut].astype(np.float64)
    below_neg = (cut + 1) - below_pos
    tp, fn = n_pos - below_pos, below_pos
    tn, fp = below_neg, n_neg - below_neg
    if rule == "kappa":
        num = 2.0 * (tp * tn - fn * fp)
        den = (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
        score = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    elif rule == "youden":
        score = tp / n_pos + tn / n_neg - 1.0
    else:
        raise ValueError(f"no threshold search for rule {rule!r}")
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return float(candidates[best[len(best) // 2]])


def shrunk_threshold(raw: float | None, prior: float, lam: float) -> float:
    """``lam * raw + (1 - lam) * prior``; the prior alone when ``raw`` is None."""
    if raw is None:
        return float(prior)
    return float(lam * raw + (1.0 - lam) * prior)


def bootstrap_variance(y: np.ndarray, q: np.ndarray, rule: str, *, n_boot: int = 100, seed: int = 0) -> float | None:
    """Variance of ``best_threshold`` over bootstrap resamples of the studies (None if under 10 resamples give one)."""
    y = np.asarray(y, dtype=np.int64)
    q = np.asarray(q, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        t = best_threshold(y[idx], q[idx], rule)
        if t is not None:
            values.append(t)
    return float(np.var(values, ddof=1)) if len(values) >= 10 else None


def between_part_variance(raws: list[float], variances: list[float], prior: float) -> float:
    """tau^2: how much the parts' true thresholds spread around ``prior``, net of their sampling noise (>= 0).

    The method-of-moments estimate ``mean((raw - prior)^2) - mean(variance)``, floored at 0.
    """
    if not raws:
        return 0.0
    spread = float(np.mean((np.asarray(raws) - prior) ** 2))
    return max(0.0, spread - float(np.mean(variances)))
