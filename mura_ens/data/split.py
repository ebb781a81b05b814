"""Train / validation / test folds: patient-grouped, label-stratified, seeded.

MURA's own ``valid`` folder is our **test** set. Everything else (``train``
or no split) is divided into ``train`` and ``val`` so that no patient has
studies on both sides and each label class (0, 1, unknown) sends about
``val_fraction`` of its *studies* to ``val``. (The seed project split by
image, which leaks patients across the split; we don't.)

Algorithm: patients are visited in a seeded random order and each goes to
``val`` when that brings the per-class ``val`` study counts (and their total)
closer to their targets (squared error); a few more passes then move single
patients in or out while that still helps. Patients stay whole, so the
counts are close to, not always exactly at, their targets. A patient id
shared by two body parts (a MURA quirk) is one patient. Rows without a
patient id are grouped by study.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UsageError

FOLDS: tuple[str, ...] = ("train", "val", "test")
TEST_SPLITS: tuple[str, ...] = ("valid", "test")
_MAX_PASSES = 5


def assign_folds(manifest: pd.DataFrame, *, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Return a copy of ``manifest`` with a ``fold`` column (``train``, ``val`` or ``test``).

    Rows with split ``valid``/``test`` get ``test``; the rest are split into
    ``train``/``val`` by patient, stratified by body part and study label. Deterministic for
    a given ``seed`` and independent of row order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = manifest.copy()
    split = out["split"].fillna("").astype(str).str.lower()
    is_test = split.isin(TEST_SPLITS).to_numpy()
    fold = np.where(is_test, "test", "train").astype(object)

    pool = out.loc[~is_test, ["study", "patient", "body_part", "label"]]
    if len(pool) and val_fraction > 0:
        val_groups = _pick_val_groups(pool, val_fraction, seed)
        group = _group_of(pool)
        fold[np.flatnonzero(~is_test)[group.isin(val_groups).to_numpy()]] = "val"
    out["fold"] = pd.array(fold.tolist(), dtype="str")
    return out


def _group_of(rows: pd.DataFrame) -> pd.Series:
    patient = rows["patient"].fillna("").astype(str)
    return patient.where(patient != "", "study:" + rows["study"].astype(str))


def _pick_val_groups(rows: pd.DataFrame, val_fraction: float, seed: int) -> set[str]:
    studies = pd.DataFrame({"group": _group_of(rows), "study": rows["study"].astype(str)})
    labels = rows["label"].astype("Int64")
    label_text = labels.map(lambda v: "unknown" if pd.isna(v) else str(int(v))).astype(str)
    studies["cls"] = rows["body_part"].fillna("").astype(str) + "/" + label_text
    studies = studies.drop_duplicates("study")
    counts = pd.crosstab(studies["group"], studies["cls"])  # groups sorted: order-independent
    classes = list(counts.columns)
    per_group = counts.to_numpy(dtype=float)
    target = per_group.sum(axis=0) * val_fraction

    order = np.random.default_rng(seed).permutation(len(counts))
    in_val = np.zeros(len(counts), dtype=bool)
    taken = np.zeros(len(classes))
    for _ in range(_MAX_PASSES):  # pass 1 is the greedy fill; later passes move single patients back or forth
        changed = False
        for index in order:
            after = taken - per_group[index] if in_val[index] else taken + per_group[index]
            if _cost(after, target) < _cost(taken, target) - 1e-9:
                taken, in_val[index], changed = after, not in_val[index], True
        if not changed:
            break
    return set(counts.index[in_val])


def _cost(taken: np.ndarray, target: np.ndarray) -> float:
    """Squared miss per class, plus the miss on the total (breaks ties towards the overall size)."""
    return float(np.sum((taken - target) ** 2) + (taken.sum() - target.sum()) ** 2)
