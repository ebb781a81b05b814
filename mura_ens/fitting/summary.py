"""Display rows of a fitted ensemble: what each part *uses* (the CLI's table and the report's).

Per part: its status, the weights and threshold the ensemble applies, and the
cross-validated kappa and log loss of the plain mean vs what is used
(``quality.plain`` -> ``quality.used_cv``, docs/ensembles.md). Candidates the
guards rejected appear only in the notes, one short sentence each.
"""

from __future__ import annotations

from typing import Any

from .ensemble import FittedEnsemble, PartModel, part_status

#: Status names as tables show them.
STATUS_TEXT = {
    "fitted": "fitted",
    "weights_only": "weights only",
    "threshold_only": "threshold only",
    "plain_mean": "plain mean",
}
COLUMNS = ("part", "status", "n (abn)", "weights used", "threshold", "kappa plain -> used", "log loss plain -> used")


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def change(quality: dict[str, Any], key: str) -> str:
    """``plain -> used`` of one quality key (``kappa``, ``log_loss``): plain at the models' threshold, used in CV."""
    plain = (quality.get("plain") or {}).get(key)
    used = (quality.get("used_cv") or {}).get(key)
    if plain is None and used is None:
        return "-"
    return f"{_fmt(plain)} -> {_fmt(used)}"


def weights_text(model: PartModel, separator: str = "\n") -> str:
    """The weights the part applies: ``name w`` per member, or ``plain mean (1/m each)``."""
    if not model.uses_weights:
        return f"plain mean (1/{len(model.weights)} each)"
    return separator.join(f"{name} {w:.2f}" for name, w in model.weights.items())


def summary_rows(fitted: FittedEnsemble) -> list[dict[str, str]]:
    """One row of display strings per body part (:data:`COLUMNS` and ``notes``), then one for the other parts."""
    rows = []
    for part, model in fitted.parts.items():
        quality = model.info.get("quality") or {}
        rows.append(
            {
                "part": part,
                "status": STATUS_TEXT.get(model.status, model.status),
                "n (abn)": f"{model.n_studies} ({model.n_positive})",
                "weights used": weights_text(model),
                "threshold": _fmt(model.threshold),
                "kappa plain -> used": change(quality, "kappa"),
                "log loss plain -> used": change(quality, "log_loss"),
                "notes": " ".join(model.notes),
            }
        )
    rows.append(
        {
            "part": "other",
            "status": STATUS_TEXT[part_status(False, fitted.global_threshold != fitted.settings.plain_threshold)],
            "n (abn)": f"{fitted.fitting.get('n_studies', '-')} ({fitted.fitting.get('n_positive', '-')}) in all",
            "weights used": "plain mean",
            "threshold": _fmt(fitted.global_threshold),
            "kappa plain -> used": "",
            "log loss plain -> used": "",
            "notes": "Parts the fit never saw and unknown body part: plain mean, global calibrator and threshold.",
        }
    )
    return rows
