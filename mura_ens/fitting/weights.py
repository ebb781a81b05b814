"""Member weights: the weighted mean of member probabilities, and the weights that minimise its log loss.

The pool of a row is ``sum(w_j * p_j) / sum(w_j)`` over the members whose
probability is present (not NaN) in that row; with every member present and
weights summing to 1 it is the plain weighted mean. A row whose present
members all have weight 0 gets the plain mean of them; a row with none gets NaN.
"""

from __future__ import annotations

import numpy as np

from .calibration import EPS


def pool(P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of each row of ``P`` (n, m) over its present members (see the module doc)."""
    P = np.asarray(P, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    present = ~np.isnan(P)
    values = np.where(present, P, 0.0)
    weight = present * w
    num = (values * weight).sum(axis=1)
    den = weight.sum(axis=1)
    count = present.sum(axis=1)
    plain = np.divide(values.sum(axis=1), count, out=np.full(len(P), np.nan), where=count > 0)
    return np.divide(num, den, out=plain, where=den > 0)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy with ``p`` clipped to [EPS, 1 - EPS] (natural log)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def fit_weights(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The weights of :func:`fit_weights_loss` (its docstring says how they are fitted)."""
    return fit_weights_loss(P, y)[0]


def fit_weights_loss(P: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(weights, total log loss of the fitted pool with the base-rate pseudo-member): non-negative weights summing to 1 for the members (columns) of ``P``, fitted by log loss.

    The weights minimise the log loss of the pool (:func:`pool`) of ``P``
    and an extra pseudo-member, a constant at the base rate ``mean(y)``. That
    pseudo-member absorbs the *calibration* role a linear pool otherwise gives
    to an uninformative member (mixing in a constant or pure noise shrinks an
    overconfident member's probabilities toward the middle and so lowers log
    loss without telling the classes apart). It is then dropped and the
    members' weights renormalised, so the weights say which members
    discriminate; confidence is the calibrator's job. Members whose output is
    constant on the rows get weight 0 outright.

    ``P`` (n, m) may hold NaN (a member absent from a row: the pooled fit of
    :mod:`mura_ens.fitting.pooling` over parts with different members); a row
    then pools its present members and the pseudo-member. With complete rows
    the problem is convex (the log of a linear function is concave), so SLSQP
    from the plain mean finds its optimum; weights below 1e-6 are set to 0.
    With one member, or when the fit fails or leaves no weight on any member,
    the plain mean's weights are returned. The loss (summed over rows, natural
    log) is the objective at the optimum, the likelihood the pooled member
    selection of :mod:`mura_ens.fitting.pooling` compares.
    """
    from scipy.optimize import minimize

    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = P.shape[1]
    plain = np.full(m, 1.0 / m)
    varying = np.array([np.ptp(c[~np.isnan(c)]) > 1e-12 if (~np.isnan(c)).any() else False for c in P.T])
    if m == 1 or not len(P) or not varying.any():
        return plain, _plain_loss(P, y)
    X = np.column_stack([P[:, varying], np.full(len(P), y.mean())])
    present = ~np.isnan(X)
    Xz = np.where(present, X, 0.0)
    k = X.shape[1]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        den = np.maximum(present @ w, 1e-12)
        p = np.clip(Xz @ w / den, EPS, 1.0 - EPS)
        value = -np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p))
        dp = (Xz - p[:, None] * present) / den[:, None]
        grad = -((y / p - (1.0 - y) / (1.0 - p))[:, None] * dp).mean(axis=0)
        return float(value), grad

    start = np.full(k, 1.0 / k)
    result = minimize(
        loss,
        start,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: float(w.sum() - 1.0), "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    w = np.clip(np.asarray(result.x, dtype=np.float64), 0.0, None)
    if not np.isfinite(w).all() or loss(w)[0] > loss(start)[0]:
        return plain, _plain_loss(P, y)
    total = loss(w)[0] * len(P)
    members = w[:-1]
    members[members < 1e-6] = 0.0
    if members.sum() <= 0:
        return plain, total
    out = np.zeros(m)
    out[varying] = members / members.sum()
    return out, total


def _plain_loss(P: np.ndarray, y: np.ndarray) -> float:
    p = pool(P, np.zeros(P.shape[1])) if len(P) else np.zeros(0)
    p = np.where(np.isnan(p), np.mean(y) if len(y) else 0.5, p)
    return log_loss(y, p) * len(y) if len(y) else 0.0
