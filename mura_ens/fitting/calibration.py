"""Probability calibrators stored as plain numbers: identity, Platt, isotonic.

- ``platt``: ``q = sigmoid(a * logit(p) + b)``, fitted by logistic regression
  on logit(p) with Platt's smoothed targets ((N+ + 1)/(N+ + 2) for positives,
  1/(N- + 2) for negatives), so separable data gives a finite slope; ``a >= 0``
  so that calibration never reverses the ranking.
- ``isotonic``: scikit-learn ``IsotonicRegression`` (clipped outside the data),
  stored as its breakpoints ``x``/``y`` (extended to x = 0 and x = 1 with the
  end values); applied as ``numpy.interp(p, x, y)``.

A calibrator fitted on n studies is shrunk toward the identity with strength
``lam`` = n/(n+k) in [0, 1]: Platt's ``a -> lam*a + (1-lam)``, ``b -> lam*b``;
isotonic's ``y -> lam*y + (1-lam)*x``. Because the identity is linear in x, the
shrunk isotonic map is exactly ``lam*iso(p) + (1-lam)*p`` on [0, 1], and it is
strictly increasing whenever ``lam < 1`` (no ties, no probabilities of exactly 0 or 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

#: Probabilities are clipped to [EPS, 1 - EPS] before a logit or a log.
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of ``p`` clipped to [EPS, 1 - EPS] (NaN stays NaN)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibrator:
    """One fitted calibrator: ``method`` and its parameters (plain floats)."""

    method: str = "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``p`` (float64; NaN stays NaN)."""
        from scipy.special import expit

        p = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            return np.asarray(expit(self.a * logit(p) + self.b), dtype=np.float64)
        if self.method == "isotonic":
            out = np.interp(p, np.asarray(self.x), np.asarray(self.y))
            return np.where(np.isnan(p), np.nan, out)
        return p.copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"method": "none"}``, ``{"method": "platt", "a", "b"}`` or ``{"method": "isotonic", "x", "y"}``."""
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        return {"method": "none"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Inverse of :meth:`to_dict`; a malformed entry is a :class:`UsageError`."""
        method = data.get("method")
        if method == "platt":
            return cls("platt", a=_finite(data["a"]), b=_finite(data["b"]))
        if method == "isotonic":
            x = tuple(_finite(v) for v in data["x"])
            y = tuple(_finite(v) for v in data["y"])
            if len(x) != len(y) or len(x) < 2 or any(b < a for a, b in zip(x, x[1:])):
                raise UsageError("isotonic calibrator needs >= 2 breakpoints with increasing x and as many y")
            return cls("isotonic", x=x, y=y)
        if method == "none":
            return cls()
        raise UsageError(f"unknown calibrator method {method!r}")


IDENTITY = Calibrator()


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UsageError(f"calibrator parameter {value!r} is not a finite number")
    return float(value)


def fit_calibrator(p: np.ndarray, y: np.ndarray, method: str, lam: float) -> Calibrator:
    """Fit ``method`` on probabilities ``p`` and 0/1 labels ``y``, shrunk toward the identity by ``lam``.

    Returns the identity for ``method="none"``, ``lam == 0`` or one class in ``y``.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if method == "none" or lam <= 0 or len(np.unique(y)) < 2:
        return IDENTITY
    if method == "platt":
        a, b = _fit_platt(logit(p), y)
        return Calibrator("platt", a=float(lam * a + (1.0 - lam)), b=float(lam * b))
    if method == "isotonic":
        return _fit_isotonic(p, y, lam)
    raise UsageError(f"unknown calibration {method!r}")


def _fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the soft-target cross-entropy of sigmoid(a*z + b): Newton's method with step halving.

    The slope is kept >= 0 (as isotonic regression is increasing): when the
    optimum has a < 0, the optimum over a >= 0 is a = 0 (the loss is convex,
    so the constrained optimum lies on the boundary) with b = logit(mean target).
    The loss is convex; a tiny ridge (1e-9) keeps the 2x2 Hessian invertible
    when ``z`` is constant. Stops when a step changes the loss by < 1e-13.
    """
    from scipy.special import expit

    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    X = np.column_stack([z, np.ones_like(z)])

    def loss(theta: np.ndarray) -> float:
        s = X @ theta
        return float(np.mean(np.logaddexp(0.0, s) - target * s))

    theta = np.array([1.0, 0.0])
    current = loss(theta)
    for _ in range(100):
        p = expit(X @ theta)
        grad = X.T @ (p - target) / len(z)
        hess = (X * (p * (1.0 - p))[:, None]).T @ X / len(z) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8 and loss(theta - scale * step) > current:
            scale /= 2.0
        new = loss(theta - scale * step)
        if scale <= 1e-8 or current - new < 1e-13:
            if new < current:
                theta = theta - scale * step
            break
        theta, current = theta - scale * step, new
    if theta[0] < 0:  # a calibrator never reverses the ranking: the best non-decreasing map is then a constant
        mean = float(np.mean(target))
        return 0.0, float(np.log(mean) - np.log1p(-mean))
    return float(theta[0]), float(theta[1])


def _fit_isotonic(p: np.ndarray, y: np.ndarray, lam: float) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
    x = np.asarray(iso.X_thresholds_, dtype=np.float64)
    v = np.asarray(iso.y_thresholds_, dtype=np.float64)
    if x[0] > 0.0:
        x, v = np.concatenate([[0.0], x]), np.concatenate([[v[0]], v])
    if x[-1] < 1.0:
        x, v = np.concatenate([x, [1.0]]), np.concatenate([v, [v[-1]]])
    shrunk = lam * v + (1.0 - lam) * x
    return Calibrator("isotonic", x=tuple(float(t) for t in x), y=tuple(float(t) for t in shrunk))
