"""The official CSV reader: header or not, root resolution, CSV label wins, nothing dropped silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mura_ens.constants import MANIFEST_COLUMNS
from mura_ens.data.layout import walk_mura
from mura_ens.data.official import find_official_csvs, read_images_csv, read_official, read_studies_csv
from mura_ens.errors import UsageError


@pytest.fixture(scope="module")
def official(synth_small):
    return read_official(synth_small["root"])


def _copy_csvs(synth_small, dest: Path, *, header: bool) -> Path:
    """The synth CSVs in ``dest/MURA-v1.1`` (optionally with a header row); images stay where they are."""
    folder = dest / "MURA-v1.1"
    folder.mkdir(parents=True)
    for name, src in synth_small["csv"].items():
        text = Path(src).read_text()
        if header:
            text = ("Img_Path\n" if name.endswith("image_paths") else "Study_Path,Label\n") + text
        (folder / f"{name}.csv").write_text(text)
    return folder


def test_official_matches_folder_walk_except_relabelled(official, synth_small):
    walked = walk_mura(synth_small["root"]).manifest
    assert tuple(official.manifest.columns) == MANIFEST_COLUMNS
    assert list(official.manifest["path"]) == list(walked["path"])
    for column in ("study", "patient", "body_part", "split"):
        assert list(official.manifest[column]) == list(walked[column]), column
    differs = official.manifest["label"] != walked["label"]
    relabelled = synth_small["relabelled_study"]
    assert set(official.manifest.loc[differs, "study"]) == {relabelled["study"]}
    assert (official.manifest.loc[differs, "label"] == relabelled["csv_label"]).all()  # the CSV wins
    assert (walked.loc[differs, "label"] == relabelled["folder_label"]).all()


def test_study_labels_equal_the_studies_csv(official, synth_small):
    studies = official.manifest.drop_duplicates("study")
    expected = {}
    for split in ("train", "valid"):
        for path, label in read_studies_csv(synth_small["csv"][f"{split}_labeled_studies"]):
            expected[os.path.normpath(os.path.join(synth_small["out"], path))] = label
    got = {os.path.dirname(p): int(lab) for p, lab in zip(studies["path"], studies["label"])}
    assert got == expected


def test_files_not_listed_are_reported(official, synth_small):
    reasons = dict(zip(official.skipped["path"], official.skipped["reason"]))
    assert reasons == {synth_small["quirk_files"]["appledouble"]: "appledouble"}
    listed = set(official.manifest["path"])
    assert synth_small["quirk_files"]["truncated"] in listed  # listed in the CSV, like real MURA
    assert synth_small["quirk_files"]["zero_byte"] in listed


@pytest.mark.parametrize("header", [False, True])
def test_with_and_without_header(tmp_path, synth_small, official, header):
    folder = _copy_csvs(synth_small, tmp_path, header=header)
    first_line = (folder / "train_image_paths.csv").read_text().splitlines()[0]
    assert first_line.startswith("Img_Path") == header
    result = read_official(folder, root=synth_small["out"])
    pd.testing.assert_frame_equal(result.manifest, official.manifest)


def test_reader_functions_on_files(tmp_path):
    images = tmp_path / "i.csv"
    images.write_text("Img_Path\nMURA-v1.1/valid/XR_HAND/patient11185/study1_positive/image1.png\n")
    assert read_images_csv(images) == ["MURA-v1.1/valid/XR_HAND/patient11185/study1_positive/image1.png"]
    images.write_text("MURA-v1.1/valid/XR_HAND/patient11185/study1_positive/image1.png\n")
    assert len(read_images_csv(images)) == 1
    studies = tmp_path / "s.csv"
    studies.write_text("path,label\nMURA-v1.1/valid/XR_HAND/patient11185/study1_positive/,1\n")
    assert read_studies_csv(studies) == [("MURA-v1.1/valid/XR_HAND/patient11185/study1_positive/", 1)]
    studies.write_text("MURA-v1.1/valid/XR_HAND/patient11185/study1_positive/,1\nx/study2/,yes\n")
    with pytest.raises(UsageError, match="'yes'"):
        read_studies_csv(studies)


def test_default_root_and_bad_root(tmp_path, synth_small):
    folder = _copy_csvs(synth_small, tmp_path, header=False)
    # Paths are "MURA-v1.1/..." but tmp_path/MURA-v1.1 holds only CSVs: no candidate root works.
    with pytest.raises(UsageError, match="--root"):
        read_official(folder)
    with pytest.raises(UsageError, match="--root"):
        read_official(folder, root=tmp_path)
    with pytest.raises(UsageError, match="not a folder"):
        read_official(folder, root=tmp_path / "nope")
    with pytest.raises(UsageError, match="no official"):
        read_official(tmp_path)


def test_missing_files_unlisted_study_and_relabel(tmp_path):
    """A hand-made copy: one listed image missing, one study absent from the studies CSV, one relabelled."""
    root = tmp_path / "data"
    base = root / "MURA-v1.1" / "valid" / "XR_FINGER"
    for study in ("patient11185/study1_positive", "patient11186/study1_negative"):
        (base / study).mkdir(parents=True)
        (base / study / "image1.png").write_bytes(b"x")
    (root / "MURA-v1.1" / "valid_image_paths.csv").write_text(
        "MURA-v1.1/valid/XR_FINGER/patient11185/study1_positive/image1.png\n"
        "MURA-v1.1/valid/XR_FINGER/patient11185/study1_positive/image2.png\n"
        "MURA-v1.1/valid/XR_FINGER/patient11186/study1_negative/image1.png\n"
        "MURA-v1.1/valid/XR_FINGER/patient11186/study1_negative/image1.png\n"
    )
    (root / "MURA-v1.1" / "valid_labeled_studies.csv").write_text(
        "MURA-v1.1/valid/XR_FINGER/patient11185/study1_positive/,0\n"
    )
    result = read_official(root / "MURA-v1.1")
    m = result.manifest.set_index("study")
    assert m.loc["valid/XR_FINGER/patient11185/study1", "label"] == 0  # CSV label beats "_positive"
    assert m.loc["valid/XR_FINGER/patient11186/study1", "label"] == 0  # not in the CSV: folder name
    reasons = sorted(result.skipped["reason"])
    assert reasons == ["duplicate", "missing_file"]
    # a skipped file carries its folder's study as the manifest has it (CSV label included)
    studies = result.skipped.set_index("reason")[["study", "label"]]
    assert studies.loc["missing_file"].tolist() == ["valid/XR_FINGER/patient11185/study1", 0]
    assert studies.loc["duplicate"].tolist() == ["valid/XR_FINGER/patient11186/study1", 0]
    missing = result.skipped.loc[result.skipped["reason"] == "missing_file", "path"].iat[0]
    assert missing.endswith("study1_positive/image2.png") and os.path.isabs(missing)


def test_studies_csv_only(tmp_path, synth_small):
    folder = tmp_path / "MURA-v1.1"
    folder.mkdir()
    shutil.copy(synth_small["csv"]["valid_labeled_studies"], folder / "valid_labeled_studies.csv")
    assert set(find_official_csvs(folder)) == {"valid"}
    result = read_official(folder, root=synth_small["out"])
    full = read_official(synth_small["root"]).manifest
    assert list(result.manifest["path"]) == list(full.loc[full["split"] == "valid", "path"])
