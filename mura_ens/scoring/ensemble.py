"""Ensembles: per-model study probabilities and their combination per body part.

Definitions (DESIGN.md, as in the MURA paper):

- a model's **study probability** = mean of its probabilities over the
  study's ``ok`` images;
- ``body_part`` ensemble: mean over the models that serve the study's body
  part (every generalist plus that part's specialists);
- ``mean`` ensemble: mean over all generalist models (specialists are still
  scored and reported in their own columns but do not vote);
- ``fitted`` ensemble (``--ensemble-file ensemble.json`` from ``mura-ens
  fit-ensemble``): per body part, the fitted weighted mean of the per-model
  study probabilities of the models serving the part, then the part's
  calibrator (:meth:`mura_ens.fitting.FittedEnsemble.apply`; parts the fit
  kept at the plain mean or never saw: the plain mean and the global
  calibrator);
- an image's ensemble probability is defined the same way over that image's
  model probabilities;
- prediction = ``prob > threshold``; for ``fitted`` the threshold is the
  part's fitted one (the global one for parts the fit does not list),
  :func:`row_thresholds`.

Because every model that serves an image scores exactly the same ``ok``
images of a study, "mean over models of per-model study means" equals "mean
over images of image ensemble probabilities" up to rounding; the study value
is computed the first way, as defined above.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..fitting.ensemble import FittedEnsemble
from .models import ModelSpec
from .runner import NO_MODEL, OK

ENSEMBLES: tuple[str, ...] = ("body_part", "mean", "fitted")
FITTED = "fitted"

#: Study statuses besides the image statuses: nothing could be scored.
ALL_FAILED = "all_images_failed"
EMPTY_STUDY = "empty_study"


def check_ensemble_name(ensemble: str) -> None:
    """Refuse an ensemble that is not one of :data:`ENSEMBLES`."""
    if ensemble not in ENSEMBLES:
        raise UsageError(f"unknown ensemble {ensemble!r}; choose one of {', '.join(ENSEMBLES)}")


def check_ensemble(ensemble: str, models: Sequence[ModelSpec]) -> None:
    """Refuse an unknown ensemble, or ``mean`` without any generalist model, before any work."""
    check_ensemble_name(ensemble)
    if ensemble == "mean" and not any(m.is_generalist for m in models):
        names = ", ".join(m.name for m in models)
        raise UsageError(
            f"--ensemble mean averages generalist models, but every model is a specialist ({names}); "
            "use --ensemble body_part"
        )


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float; :class:`UsageError` when it is outside [0, 1]."""
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {threshold}")
    return value


def resolve_threshold(models: Sequence[ModelSpec], threshold: float | None = None) -> float:
    """The decision threshold: ``threshold`` if given, else the models' own if they all agree, else 0.5.

    Each model's metadata carries the threshold it was tuned with; when the
    models disagree no single one of them is right for their average, so the
    neutral 0.5 is used (pass ``--threshold`` to choose).
    """
    if threshold is not None:
        return check_threshold(threshold)
    values = {m.threshold for m in models}
    return values.pop() if len(values) == 1 else 0.5


def members(ensemble: str, models: Sequence[ModelSpec], body_part: str) -> list[ModelSpec]:
    """The models whose probabilities the ``ensemble`` combines for ``body_part``.

    ``mean``: the generalists; ``body_part`` and ``fitted``: the models serving the part.
    """
    if ensemble == "mean":
        return [m for m in models if m.is_generalist]
    return [m for m in models if m.serves(body_part)]


def row_thresholds(frame: pd.DataFrame, threshold: float, fitted: FittedEnsemble | None = None) -> np.ndarray:
    """The decision threshold of each row: ``threshold``, or with ``fitted`` its body part's fitted one."""
    if fitted is None:
        return np.full(len(frame), float(threshold))
    return fitted.thresholds(frame["body_part"].tolist())


def image_probabilities(
    images: pd.DataFrame, models: Sequence[ModelSpec], *, ensemble: str, fitted: FittedEnsemble | None = None
) -> np.ndarray:
    """Ensemble probability of each image row (NaN where the image was not scored).

    ``images`` needs ``body_part``, ``status`` and every model's
    ``prob__<model>`` column; ``fitted`` is the ensemble of ``ensemble="fitted"``.
    """
    out = np.full(len(images), np.nan)
    parts = images["body_part"].astype("string").fillna("").to_numpy(dtype=object)
    ok = (images["status"] == OK).to_numpy()
    if ensemble == FITTED:
        out[ok] = _fitted(fitted).apply(images.loc[ok])[0]
        return out
    for part in dict.fromkeys(parts.tolist()):
        cols = [m.column for m in members(ensemble, models, part)]
        rows = (parts == part) & ok
        if not cols or not rows.any():
            continue
        values = images.loc[rows, cols].to_numpy(dtype=np.float64)
        out[rows] = values.mean(axis=1)
    return out


def _fitted(fitted: FittedEnsemble | None) -> FittedEnsemble:
    if fitted is None:  # pragma: no cover - a caller's bug
        raise ValueError("ensemble 'fitted' needs the FittedEnsemble")
    return fitted


def study_table(
    images: pd.DataFrame,
    models: Sequence[ModelSpec],
    *,
    ensemble: str,
    threshold: float,
    fitted: FittedEnsemble | None = None,
) -> pd.DataFrame:
    """One row per study: per-model study probabilities, the ensemble ``prob``, ``pred`` and ``status``.

    Columns: study, patient, body_part, n_images, n_scored, label,
    ``prob__<model>``..., prob, pred, status. ``images`` is the image table
    (one row per input file); rows whose ``counted`` column is False (files the
    scan skipped, e.g. ``._image1.png``) are listed there but are not images of
    the study, so ``n_images`` counts only the study's manifest images and
    ``n_scored`` its ``ok`` ones. ``status`` is ``ok``, ``no_model_for_body_part``
    (no ensemble member serves the part), ``all_images_failed`` (models serve it
    but no image could be scored) or ``empty_study`` (a study folder without
    images); those get empty ``prob`` and ``pred``.
    Studies keep their order of first appearance in ``images``. ``pred`` is
    ``prob > threshold``, with ``fitted`` (``ensemble="fitted"``) the study's
    part threshold (:func:`row_thresholds`).
    """
    from ..metrics import study_probabilities

    cols = [m.column for m in models]
    counted = images["counted"].to_numpy(dtype=bool) if "counted" in images.columns else np.ones(len(images), bool)
    scored = images.loc[counted].copy()
    # Probabilities of images that are not ok never count (there are none, but be explicit).
    scored.loc[scored["status"] != OK, cols] = np.nan
    studies = study_probabilities(scored, prob_cols=cols)
    n_scored = (scored["status"] == OK).groupby(scored["study"], sort=False).sum()
    studies.insert(_column_index(studies, "n_images") + 1, "n_scored", studies["study"].map(n_scored).astype("int64"))

    # Studies that have no counted image row (empty study folders) still get a row.
    all_studies = pd.unique(images["study"].astype("string").fillna("").to_numpy(dtype=object))
    missing = [s for s in all_studies if s and s not in set(studies["study"])]
    if missing:
        first = images.drop_duplicates("study").set_index("study")
        extra = pd.DataFrame(
            {
                "study": missing,
                "patient": [first.at[s, "patient"] for s in missing],
                "body_part": [first.at[s, "body_part"] for s in missing],
                "n_images": 0,
                "n_scored": 0,
                "label": pd.Series([first.at[s, "label"] for s in missing], dtype="Int64"),
            }
        )
        studies = pd.concat([studies, extra], ignore_index=True)
        order = {s: i for i, s in enumerate(all_studies)}
        studies = studies.sort_values("study", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)

    prob, status = _combine(studies, models, ensemble, fitted)
    n_images = studies["n_images"].to_numpy()
    n_ok = studies["n_scored"].to_numpy()
    status[(status == OK) & (n_images == 0)] = EMPTY_STUDY
    status[(status == OK) & (n_ok == 0)] = ALL_FAILED
    prob[status != OK] = np.nan

    studies["label"] = studies["label"].astype("Int64")
    studies["prob"] = prob
    cuts = row_thresholds(studies, threshold, fitted if ensemble == FITTED else None)
    pred = pd.array([pd.NA if np.isnan(p) else int(p > t) for p, t in zip(prob, cuts)], dtype="Int64")
    studies["pred"] = pred
    studies["status"] = status.astype(str)
    return studies[["study", "patient", "body_part", "n_images", "n_scored", "label", *cols, "prob", "pred", "status"]]


def _combine(
    studies: pd.DataFrame, models: Sequence[ModelSpec], ensemble: str, fitted: FittedEnsemble | None
) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble probability of each study row and its status (``ok`` or ``no_model_for_body_part``)."""
    parts = studies["body_part"].astype("string").fillna("").to_numpy(dtype=object)
    prob = np.full(len(studies), np.nan)
    status = np.full(len(studies), OK, dtype=object)
    for part in dict.fromkeys(parts.tolist()):
        rows = parts == part
        voters = [m.column for m in members(ensemble, models, part)]
        if not voters:
            status[rows] = NO_MODEL
            continue
        if ensemble != FITTED:
            prob[rows] = studies.loc[rows, voters].to_numpy(dtype=np.float64).mean(axis=1)
    if ensemble == FITTED:
        prob = _fitted(fitted).apply(studies)[0]
    return prob, status


def _column_index(frame: pd.DataFrame, column: str) -> int:
    """Position of a column of unique name (``get_loc`` is typed to also return slices and masks)."""
    return int(frame.columns.get_loc(column))  # type: ignore[arg-type]
