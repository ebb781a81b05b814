"""Patient-grouped, label-stratified, seeded train/val split; MURA valid is the test fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mura_ens.data.layout import manifest_frame
from mura_ens.data.manifest import scan_source
from mura_ens.data.split import assign_folds
from mura_ens.errors import UsageError


def _random_manifest(seed: int, n_patients: int = 300) -> pd.DataFrame:
    """Patients with 1-3 studies, 1-3 images each; about 40% abnormal; a few unknown labels."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(int(rng.integers(1, 4))):
            label = None if rng.random() < 0.05 else int(rng.random() < 0.4)
            split = "valid" if p % 10 == 0 else ("train" if p % 3 else "")
            for i in range(int(rng.integers(1, 4))):
                rows.append(
                    {
                        "path": f"/d/p{p}/s{s}/i{i}.png",
                        "study": f"XR_HAND/patient{p:05d}/study{s + 1}",
                        "patient": f"patient{p:05d}",
                        "body_part": "XR_HAND",
                        "label": label,
                        "split": split,
                    }
                )
    return manifest_frame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_stratified_and_sized(seed):
    m = _random_manifest(seed)
    folds = assign_folds(m, val_fraction=0.2, seed=seed)
    assert list(folds.columns) == list(m.columns) + ["fold"]
    pd.testing.assert_frame_equal(folds.drop(columns="fold"), m)
    assert set(folds["fold"]) == {"train", "val", "test"}
    assert (folds.loc[m["split"] == "valid", "fold"] == "test").all()
    assert (folds.loc[m["split"] != "valid", "fold"] != "test").all()
    # No patient on two sides.
    assert (folds.groupby("patient")["fold"].nunique() == 1).all()
    # About 20% of the non-test studies of each label class in val.
    studies = folds[folds["fold"] != "test"].drop_duplicates("study")
    cls = studies["label"].astype("string").fillna("unknown")
    for value, group in studies.groupby(cls):
        share = (group["fold"] == "val").mean()
        assert abs(share - 0.2) < (0.03 if len(group) > 100 else 0.1), (value, share, len(group))


def test_deterministic_seeded_and_order_independent():
    m = _random_manifest(5)
    a = assign_folds(m, seed=11)
    assert a["fold"].tolist() == assign_folds(m, seed=11)["fold"].tolist()
    assert a["fold"].tolist() != assign_folds(m, seed=12)["fold"].tolist()
    shuffled = m.sample(frac=1.0, random_state=3)
    b = assign_folds(shuffled, seed=11)
    assert b["fold"].to_dict() == a["fold"].to_dict()  # same row (by index), same fold


def test_val_fraction_bounds_and_zero():
    m = _random_manifest(0, n_patients=30)
    assert set(assign_folds(m, val_fraction=0.0)["fold"]) == {"train", "test"}
    for bad in (-0.1, 1.0):
        with pytest.raises(UsageError, match=str(bad)):
            assign_folds(m, val_fraction=bad)


def test_rows_without_patient_group_by_study():
    m = manifest_frame(
        [
            {
                "path": f"/x/{i}.png",
                "study": f"s{i // 2}",
                "patient": "",
                "body_part": "",
                "label": i % 4 // 2,
                "split": "",
            }
            for i in range(40)
        ]
    )
    folds = assign_folds(m, val_fraction=0.25, seed=0)
    assert (folds.groupby("study")["fold"].nunique() == 1).all()
    assert (folds.drop_duplicates("study")["fold"] == "val").sum() == 5


def test_on_synth_shared_patient_stays_whole(synth_small):
    m = scan_source(synth_small["root"]).manifest
    folds = assign_folds(m, seed=0)
    shared = synth_small["shared_patient"]["patient"]
    assert folds.loc[folds["patient"] == shared, "fold"].nunique() == 1
    assert (folds.groupby("patient")["fold"].nunique() == 1).all()
    assert (folds.loc[folds["split"] == "valid", "fold"] == "test").all()
    n_val = folds.loc[folds["fold"] == "val", "study"].nunique()
    n_pool = folds.loc[folds["fold"] != "test", "study"].nunique()
    assert 0.1 <= n_val / n_pool <= 0.3
