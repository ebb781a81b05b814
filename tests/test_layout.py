"""Walking a MURA-layout tree from any depth; nothing skipped silently."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mura_ens.constants import MANIFEST_COLUMNS
from mura_ens.data.layout import ScanResult, parse_study_dir, walk_mura


@pytest.fixture(scope="module")
def full_walk(synth_small) -> ScanResult:
    return walk_mura(synth_small["root"])


def _all_files(folder) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(folder) for f in files}


def test_manifest_schema(full_walk):
    m = full_walk.manifest
    assert tuple(m.columns) == MANIFEST_COLUMNS
    assert str(m["label"].dtype) == "Int64"
    for column in ("path", "study", "patient", "body_part", "split"):
        assert pd.api.types.is_string_dtype(m[column]), column
        assert not m[column].isna().any()
    assert all(os.path.isabs(p) for p in m["path"])
    assert list(full_walk.skipped.columns) == ["path", "reason", "study", "patient", "body_part", "label"]
    assert str(full_walk.skipped["label"].dtype) == "Int64"


def test_walk_of_root_matches_synth_counts(full_walk, synth_small):
    m = full_walk.manifest
    studies = m.drop_duplicates("study")
    for split in ("train", "valid"):
        assert (studies["split"] == split).sum() == synth_small["totals"][split]["studies"]
        assert (m["split"] == split).sum() == synth_small["totals"][split]["images"]


def test_every_file_is_a_row_or_skipped(full_walk, synth_small):
    rows = set(full_walk.manifest["path"])
    skipped = set(full_walk.skipped["path"])
    assert rows.isdisjoint(skipped)
    assert rows | skipped == _all_files(synth_small["root"])
    reasons = dict(zip(full_walk.skipped["path"], full_walk.skipped["reason"]))
    assert reasons[synth_small["quirk_files"]["appledouble"]] == "appledouble"
    assert {reasons[p] for p in synth_small["csv"].values()} == {"not_an_image_suffix"}
    # Damaged images stay in the manifest: scoring records their status per image.
    assert synth_small["quirk_files"]["truncated"] in rows
    assert synth_small["quirk_files"]["zero_byte"] in rows


def test_study_key_unique_when_patient_under_two_parts(full_walk, synth_small):
    shared = synth_small["shared_patient"]
    m = full_walk.manifest
    rows = m[m["patient"] == shared["patient"]]
    assert sorted(rows["body_part"].unique()) == shared["body_parts"]
    per_study = rows.groupby("study")["body_part"].nunique()
    assert (per_study == 1).all() and len(per_study) >= 2
    assert all(key.split("/")[1] in shared["body_parts"] for key in per_study.index)
    # Across the dataset a study key always means one folder.
    folders = m["path"].map(os.path.dirname).groupby(m["study"]).nunique()
    assert (folders == 1).all()


def test_labels_from_folder_names(full_walk):
    m = full_walk.manifest
    folder = m["path"].map(lambda p: Path(p).parent.name)
    assert (m.loc[folder.str.endswith("_positive"), "label"] == 1).all()
    assert (m.loc[folder.str.endswith("_negative"), "label"] == 0).all()


@pytest.mark.parametrize("depth", ["root", "split", "part", "patient", "study"])
def test_walk_from_any_depth(full_walk, synth_small, depth):
    m = full_walk.manifest
    row = m[(m["split"] == "valid") & (m["body_part"] == "XR_WRIST")].iloc[0]
    study_dir = Path(row["path"]).parent
    start = {
        "root": Path(synth_small["root"]),
        "split": study_dir.parents[2],
        "part": study_dir.parents[1],
        "patient": study_dir.parent,
        "study": study_dir,
    }[depth]
    part = walk_mura(start).manifest
    expected = m[m["path"].map(lambda p: Path(p).is_relative_to(start))].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected)
    assert (part["study"] == row["study"]).any()
    one = part[part["study"] == row["study"]].iloc[0]
    assert (one["split"], one["body_part"], one["patient"]) == ("valid", "XR_WRIST", row["patient"])


def test_walk_is_deterministic_and_naturally_sorted(tmp_path):
    study = tmp_path / "train" / "XR_HAND" / "patient00003" / "study1_negative"
    study.mkdir(parents=True)
    for i in (10, 2, 1):
        (study / f"image{i}.png").write_bytes(b"x")
    first = walk_mura(tmp_path)
    assert [Path(p).name for p in first.manifest["path"]] == ["image1.png", "image2.png", "image10.png"]
    pd.testing.assert_frame_equal(first.manifest, walk_mura(tmp_path).manifest)


def test_odd_files_and_folders(tmp_path):
    part = tmp_path / "MURA-v1.1" / "valid" / "XR_ELBOW"
    good = part / "patient11186" / "study1_positive"
    unlabeled = part / "patient11187" / "study2"
    empty = part / "patient11188" / "study1_negative"
    hidden = good / ".thumbs"
    for folder in (good, unlabeled, empty, hidden):
        folder.mkdir(parents=True)
    (good / "image1.png").write_bytes(b"")  # zero bytes: still a row
    (good / "IMAGE2.PNG").write_bytes(b"x")
    (good / "._image1.png").write_bytes(b"\x00\x05\x16\x07")
    (good / ".DS_Store").write_bytes(b"x")
    (good / "notes.txt").write_text("x")
    (hidden / "image9.png").write_bytes(b"x")
    (unlabeled / "image1.jpg").write_bytes(b"x")
    (part / "patient11186" / "image1.png").write_bytes(b"x")  # not inside a study folder
    (part / "readme.md").write_text("x")

    result = walk_mura(tmp_path)
    m = result.manifest.set_index("path")
    assert set(m.index) == {str(good / "image1.png"), str(good / "IMAGE2.PNG"), str(unlabeled / "image1.jpg")}
    assert m.loc[str(good / "image1.png"), "study"] == "valid/XR_ELBOW/patient11186/study1"
    assert m.loc[str(unlabeled / "image1.jpg"), "study"] == "valid/XR_ELBOW/patient11187/study2"
    assert pd.isna(m.loc[str(unlabeled / "image1.jpg"), "label"])

    reasons = dict(zip(result.skipped["path"], result.skipped["reason"]))
    assert reasons == {
        str(good / "._image1.png"): "appledouble",
        str(good / ".DS_Store"): "hidden",
        str(good / "notes.txt"): "not_an_image_suffix",
        str(hidden / "image9.png"): "hidden",
        str(part / "patient11186" / "image1.png"): "outside_study_folder",
        str(part / "readme.md"): "not_an_image_suffix",
        str(empty): "empty_study",
    }


def test_study_folders_without_patient_or_part(tmp_path):
    # Outside the MURA layout, keys would collide ("study1" twice): they fall back to folder paths.
    for name in ("a", "b"):
        (tmp_path / name / "study1_positive").mkdir(parents=True)
        (tmp_path / name / "study1_positive" / "image1.png").write_bytes(b"x")
    m = walk_mura(tmp_path).manifest
    assert m["study"].nunique() == 2
    assert (m["patient"] == "").all() and (m["body_part"] == "").all() and (m["split"] == "").all()


def test_parse_study_dir():
    info = parse_study_dir(["", "data", "MURA-v1.1", "train", "XR_SHOULDER", "patient00001", "study1_positive"])
    assert info.key == "train/XR_SHOULDER/patient00001/study1"
    assert (info.split, info.body_part, info.patient, info.label) == ("train", "XR_SHOULDER", "patient00001", 1)
    no_patient = parse_study_dir(["valid", "XR_HAND", "study3_negative"])
    assert no_patient.key == "valid/XR_HAND/study3" and no_patient.label == 0
    assert parse_study_dir(["XR_HAND", "patient1", "image1.png"]) is None
    assert parse_study_dir(["x", "study2"]).label is None


def test_symlinked_start_folder_reads_the_target_ancestors(tmp_path):
    study = tmp_path / "MURA-v1.1" / "valid" / "XR_WRIST" / "patient11185" / "study1_positive"
    study.mkdir(parents=True)
    (study / "image1.png").write_bytes(b"x")
    link = tmp_path / "wrist"
    link.symlink_to(study.parents[1], target_is_directory=True)
    m = walk_mura(link).manifest
    assert m["path"].tolist() == [str(link / "patient11185" / "study1_positive" / "image1.png")]
    assert m["study"].tolist() == ["valid/XR_WRIST/patient11185/study1"]


def test_skipped_files_carry_the_study_of_their_folder(tmp_path):
    valid = tmp_path / "MURA-v1.1" / "valid"
    hand = valid / "XR_HAND" / "patient11001" / "study1_positive"
    hand.mkdir(parents=True)
    (hand / "image1.png").write_bytes(b"png")
    (hand / "._image1.png").write_bytes(b"meta")
    empty = valid / "XR_WRIST" / "patient11002" / "study2_negative"
    empty.mkdir(parents=True)
    (valid / "README.txt").write_text("hi")
    skipped = walk_mura(valid).skipped.set_index("path")
    columns = ["reason", "study", "patient", "body_part", "label"]
    assert skipped.loc[str(hand / "._image1.png"), columns].tolist() == [
        "appledouble",
        "valid/XR_HAND/patient11001/study1",
        "patient11001",
        "XR_HAND",
        1,
    ]
    assert skipped.loc[str(empty), columns].tolist() == [
        "empty_study",
        "valid/XR_WRIST/patient11002/study2",
        "patient11002",
        "XR_WRIST",
        0,
    ]
    stray = skipped.loc[str(valid / "README.txt"), columns]
    assert stray[:4].tolist() == ["not_an_image_suffix", "", "", ""] and pd.isna(stray["label"])
