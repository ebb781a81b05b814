"""Display rows of a fitted ensemble (the CLI's table; reusable by a report)."""

from __future__ import annotations

from typing import Any

from .ensemble import FITTED, FittedEnsemble


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(quality: dict[str, Any], key: str) -> str:
    plain = (quality.get("plain") or {}).get(key)
    fitted = (quality.get("fitted_cv") or {}).get(key)
    return f"{_fmt(plain)} -> {_fmt(fitted)}" if fitted is not None else f"{_fmt(plain)}"


def summary_rows(fitted: FittedEnsemble) -> list[dict[str, str]]:
    """One row of display strings per body part, then one for the global fallback.

    Columns: part, n (abn), weights (one member a line), threshold,
    kappa and AUC (the plain mean on the part's studies -> the fit,
    cross-validated inside the fitting set), notes.
    """
    rows = []
    for part, model in fitted.parts.items():
        quality = model.info.get("quality") or {}
        weights = "\n".join(f"{name} {w:.2f}" for name, w in model.weights.items())
        rows.append(
            {
                "part": part,
                "n (abn)": f"{model.n_studies} ({model.n_positive})",
                "weights": weights if model.status == FITTED else "plain mean",
                "threshold": _fmt(model.threshold),
                "kappa plain->fit": _pair(quality, "kappa"),
                "AUC plain->fit": _pair(quality, "auc"),
                "notes": "; ".join(model.notes),
            }
        )
    rows.append(
        {
            "part": "other",
            "n (abn)": f"{fitted.fitting.get('n_studies', '-')} ({fitted.fitting.get('n_positive', '-')}) in all",
            "weights": "plain mean",
            "threshold": _fmt(fitted.global_threshold),
            "kappa plain->fit": "",
            "AUC plain->fit": "",
            "notes": "global calibrator and threshold: parts the fit never saw, unknown body part",
        }
    )
    return rows
