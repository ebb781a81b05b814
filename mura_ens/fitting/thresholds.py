"""Decision thresholds by rule (kappa, Youden), and their shrinkage toward a global threshold.

A prediction is ``prob > threshold``, as everywhere in mura-ens. Candidate
thresholds are the midpoints between consecutive distinct probabilities, so
every distinct split of the studies is tried once and the chosen threshold
sits halfway between the two studies it separates. When several candidates
reach the best value, the middle one of them (by position) is taken.

:func:`best_threshold` maximises the rule on the studies themselves;
:func:`smooth_threshold` (what the fit uses) maximises the rule's curve
averaged over bootstrap resamples of the studies, which is far less at the
mercy of the one or two studies nearest the threshold.
"""

from __future__ import annotations

import numpy as np


def shrink_factor(n: int, k: float) -> float:
    """n / (n + k): the weight a part's own estimate gets against its prior (1 when k = 0)."""
    return 1.0 if k == 0 else n / (n + k)


def _splits(y: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels sorted by q, last index of each run of equal q but the top one, candidate thresholds) or None."""
    y = np.asarray(y, dtype=np.int64)
    q = np.asarray(q, dtype=np.float64)
    keep = ~np.isnan(q)
    y, q = y[keep], q[keep]
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None
    order = np.argsort(q, kind="stable")
    qs, ys = q[order], y[order]
    cut = np.flatnonzero(qs[1:] != qs[:-1])
    if not len(cut):
        return None
    candidates = (qs[cut] + qs[cut + 1]) / 2.0
    # a midpoint that rounds up onto the upper value would flip it: take the lower value then
    candidates = np.where(candidates < qs[cut + 1], candidates, qs[cut])
    return ys, cut, candidates


def _scores(
    below_pos: np.ndarray, below_all: np.ndarray, n_pos: np.ndarray | float, n: np.ndarray | float, rule: str
) -> np.ndarray:
    """The rule's value when the studies at or below each candidate are called negative (arrays broadcast).

    ``n_pos`` and ``n`` are plain counts for one sample, or per-resample columns for bootstrap resamples.
    """
    n_neg = n - n_pos
    tp, fn = n_pos - below_pos, below_pos
    tn = below_all - below_pos
    fp = n_neg - tn
    if rule == "kappa":
        num = 2.0 * (tp * tn - fn * fp)
        den = (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    if rule == "youden":
        return tp / n_pos + tn / n_neg - 1.0
    raise ValueError(f"no threshold search for rule {rule!r}")


def _middle_of_best(candidates: np.ndarray, score: np.ndarray) -> float:
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return float(candidates[best[len(best) // 2]])


def best_threshold(y: np.ndarray, q: np.ndarray, rule: str) -> float | None:
    """The threshold on ``q`` that maximises ``rule`` (``kappa`` or ``youden``) for labels ``y``.

    None when it cannot be chosen: one class in ``y``, or fewer than two
    distinct values in ``q``. Rows with a NaN probability are ignored.
    """
    split = _splits(y, q)
    if split is None:
        return None
    ys, cut, candidates = split
    below_pos = np.cumsum(ys)[cut].astype(np.float64)
    score = _scores(below_pos, (cut + 1).astype(np.float64), float(ys.sum()), float(len(ys)), rule)
    return _middle_of_best(candidates, score)


def smooth_threshold(y: np.ndarray, q: np.ndarray, rule: str, *, n_boot: int = 200, seed: int = 0) -> float | None:
    """The candidate threshold that maximises the rule's curve *averaged over bootstrap resamples* of the studies.

    Same candidates as :func:`best_threshold` (midpoints between consecutive
    distinct probabilities). Each of ``n_boot`` seeded resamples (multinomial
    counts per study) gives the rule's value at every candidate; resamples
    with one class are skipped; ties of the mean curve take the middle one.
    The averaged curve is a smoothed version of the step function, so a split
    set by one or two studies no longer wins over a broad plateau.
    None when :func:`best_threshold` is None.
    """
    split = _splits(y, q)
    if split is None:
        return None
    ys, cut, candidates = split
    n = len(ys)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    pos = counts * ys
    n_pos = pos.sum(axis=1, keepdims=True)
    both = (n_pos[:, 0] > 0) & (n_pos[:, 0] < n)
    if not both.any():
        return best_threshold(y, q, rule)
    below_pos = np.cumsum(pos[both], axis=1)[:, cut]
    below_all = np.cumsum(counts[both], axis=1)[:, cut]
    score = _scores(below_pos, below_all, n_pos[both], float(n), rule)
    return _middle_of_best(candidates, score.mean(axis=0))


def rule_value(y: np.ndarray, pred: np.ndarray, rule: str) -> float | None:
    """Cohen's kappa (``kappa``, also for ``fixed``) or Youden's J (``youden``) of 0/1 ``pred``; None with one class."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None
    below_pos = float(np.sum((pred == 0) & (y == 1)))
    below_all = float(np.sum(pred == 0))
    return float(_scores(np.array(below_pos), np.array(below_all), float(n_pos), float(len(y)), criterion(rule)))


def resampled_rule_value(y: np.ndarray, pred: np.ndarray, counts: np.ndarray, rule: str) -> np.ndarray:
    """:func:`rule_value` on each resample, a row of ``counts`` (b, n) holding each study's copies; NaN with one class."""
    y = np.asarray(y, dtype=np.float64)
    below = np.asarray(pred, dtype=np.int64) == 0
    n_pos = counts @ y
    n = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # one-class resamples: set to NaN below
        values = _scores(counts @ (below * y), counts @ below.astype(np.float64), n_pos, n, criterion(rule))
    return np.where((n_pos > 0) & (n_pos < n), values, np.nan)


def criterion(rule: str) -> str:
    """The quantity a threshold rule targets: ``youden`` for youden, ``kappa`` otherwise (``fixed`` too)."""
    return "youden" if rule == "youden" else "kappa"


def shrunk_threshold(raw: float | None, prior: float, lam: float) -> float:
    """``lam * raw + (1 - lam) * prior``; the prior alone when ``raw`` is None."""
    if raw is None:
        return float(prior)
    return float(lam * raw + (1.0 - lam) * prior)


def bootstrap_variance(y: np.ndarray, q: np.ndarray, rule: str, *, n_boot: int = 100, seed: int = 0) -> float | None:
    """Variance of :func:`smooth_threshold` over bootstrap resamples of the studies (None if under 10 resamples give one)."""
    y = np.asarray(y, dtype=np.int64)
    q = np.asarray(q, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for b in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        t = smooth_threshold(y[idx], q[idx], rule, n_boot=50, seed=seed + 1 + b)
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
