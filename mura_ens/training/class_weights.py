"""Class weights of the MURA paper, per study type (body part), from the training fold.

Rajpurkar et al. (2017) weight the binary cross-entropy of an image of study
type T by ``w_T,1 = N_T / (A_T + N_T)`` when abnormal and
``w_T,0 = A_T / (A_T + N_T)`` when normal, where ``A_T`` and ``N_T`` count the
abnormal and normal *images* of type T in the training set. A specialist
(one body part) thus gets plain per-class weights; a generalist gets one pair
per body part. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Weight given to both classes of a body part that has only one class in the
#: training fold (the formula would give its images weight 0 and drop them).
ONE_CLASS_WEIGHT = 0.5


def class_weight_table(train: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """Per body part of the training rows: counts and the two weights.

    ``train`` needs ``body_part`` and ``label`` (0/1, no missing values).
    Returns ``{part: {"abnormal": A, "normal": N, "w_abnormal": N/(A+N),
    "w_normal": A/(A+N)}}``; an empty part name means "unknown". A part with
    a single class gets :data:`ONE_CLASS_WEIGHT` for both.
    """
    table: dict[str, dict[str, float | int]] = {}
    labels = pd.to_numeric(train["label"]).astype("int64")
    parts = train["body_part"].astype("string").fillna("")
    for part in sorted(set(parts.tolist())):
        mask = (parts == part).to_numpy()
        abnormal = int(labels[mask].sum())
        normal = int(mask.sum()) - abnormal
        total = abnormal + normal
        if abnormal == 0 or normal == 0:
            w_abnormal = w_normal = ONE_CLASS_WEIGHT
        else:
            w_abnormal, w_normal = normal / total, abnormal / total
        table[part] = {"abnormal": abnormal, "normal": normal, "w_abnormal": w_abnormal, "w_normal": w_normal}
    return table


def sample_weights(frame: pd.DataFrame, table: dict[str, dict[str, float | int]]) -> np.ndarray:
    """The weight of each row of ``frame`` (``body_part``, ``label``) under ``table``.

    Rows of a body part missing from the table (absent from the training
    fold) get :data:`ONE_CLASS_WEIGHT`.
    """
    labels = pd.to_numeric(frame["label"]).astype("int64").to_numpy()
    parts = frame["body_part"].astype("string").fillna("").tolist()
    weights = np.full(len(frame), ONE_CLASS_WEIGHT, dtype=np.float32)
    for i, (part, label) in enumerate(zip(parts, labels, strict=True)):
        entry = table.get(part)
        if entry is not None:
            weights[i] = entry["w_abnormal"] if label == 1 else entry["w_normal"]
    return weights
