"""What ``fit-ensemble`` is asked to do: :class:`FitSettings`, validated once when made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import UsageError

CALIBRATIONS: tuple[str, ...] = ("none", "platt", "isotonic")
THRESHOLD_RULES: tuple[str, ...] = ("kappa", "youden", "fixed")


@dataclass(frozen=True)
class FitSettings:
    """Options of :func:`mura_ens.fitting.fit_ensemble`; every field is checked in ``__post_init__``.

    - ``calibrate``: ``none``, ``platt`` (logistic regression on logit(p)) or
      ``isotonic`` (scikit-learn ``IsotonicRegression``), one calibrator per part.
    - ``threshold_rule``: ``kappa`` (maximise Cohen's kappa), ``youden``
      (maximise sensitivity + specificity - 1) or ``fixed`` (``threshold`` everywhere).
    - ``threshold``: the ``fixed`` rule's threshold, and the global threshold
      when no rule can be fitted (one class overall).
    - ``shrinkage``: k of the weights' and calibrators' shrink factor n/(n+k)
      toward the plain mean / the identity (0 = none).
    - ``threshold_shrinkage``: None (``auto``, the default) shrinks each part's
      threshold toward the global one by empirical Bayes, never trusting it
      more than the part's weights; a number k shrinks by n/(n+k) (0 = none).
      See :mod:`mura_ens.fitting.fit` and docs/ensembles.md.
    - ``min_studies``: a part with fewer labelled studies keeps the plain mean.
    - ``cv_folds``: patient-grouped cross-validation folds used to judge the
      fit (fewer when a part has fewer patients or studies of a class).
    - ``seed``: seed of the fold assignment.
    - ``plain_threshold``: the threshold the plain mean is judged with (what
      ``score`` used; read from ``metrics.json`` by the CLI).
    """

    calibrate: str = "none"
    threshold_rule: str = "kappa"
    threshold: float = 0.5
    shrinkage: float = 10.0
    threshold_shrinkage: float | None = None
    min_studies: int = 10
    cv_folds: int = 5
    seed: int = 0
    plain_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.calibrate not in CALIBRATIONS:
            raise UsageError(f"--calibrate must be one of {', '.join(CALIBRATIONS)}, got {self.calibrate!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise UsageError(
                f"--threshold-rule must be one of {', '.join(THRESHOLD_RULES)}, got {self.threshold_rule!r}"
            )
        for name in ("threshold", "plain_threshold"):
            value = _number(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"--{_flag(name)} must be in [0, 1], got {value!r}")
        for name in ("shrinkage", "threshold_shrinkage"):
            if name == "threshold_shrinkage" and self.threshold_shrinkage is None:
                continue
            value = _number(name, getattr(self, name))
            if value < 0 or math.isinf(value):
                raise UsageError(f"--{_flag(name)} must be a finite number >= 0, got {value!r}")
        _integer("min_studies", self.min_studies, 2)
        _integer("cv_folds", self.cv_folds, 2)
        _integer("seed", self.seed, 0)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (field order kept)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitSettings:
        """Settings from :meth:`to_dict` output; unknown keys are a :class:`UsageError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown fit settings: {', '.join(unknown)}")
        return cls(**data)


def _flag(name: str) -> str:
    return {"cv_folds": "folds"}.get(name, name).replace("_", "-")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise UsageError(f"--{_flag(name)} must be a number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{_flag(name)} must be an integer >= {minimum}, got {value!r}")
