"""From a data source to the rows a training run uses (no TensorFlow).

The rows themselves (:class:`TrainingData`, :func:`load_training_data`,
:func:`model_rows`, :func:`manifest_sha256`, :func:`select_parts`,
:func:`limit_images`, :data:`FOLDS`) are defined in
:mod:`mura_ens.data.training_rows` (int8 calibration re-derives a run's folds
with them) and importable from here; this module adds the class counts of the
model card (:func:`fold_counts`).
"""

from __future__ import annotations

import pandas as pd

from ..data.training_rows import (
    FOLDS,
    TrainingData,
    limit_images,
    load_training_data,
    manifest_sha256,
    model_rows,
    select_parts,
)

__all__ = [
    "FOLDS",
    "TrainingData",
    "fold_counts",
    "limit_images",
    "load_training_data",
    "manifest_sha256",
    "model_rows",
    "select_parts",
]


def fold_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per fold: images, studies, patients and abnormal/normal images and studies."""
    counts: dict[str, dict[str, int]] = {}
    for fold in FOLDS:
        rows = frame.loc[frame["fold"] == fold]
        studies = rows.groupby("study", sort=False)["label"].first()
        counts[fold] = {
            "images": int(len(rows)),
            "abnormal_images": int((rows["label"] == 1).sum()),
            "normal_images": int((rows["label"] == 0).sum()),
            "studies": int(len(studies)),
            "abnormal_studies": int((studies == 1).sum()),
            "normal_studies": int((studies == 0).sum()),
            "patients": int(rows["patient"].nunique()),
        }
    return counts
