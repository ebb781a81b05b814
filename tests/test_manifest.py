"""Manifest: source dispatch, reading, validation with row numbers, atomic writing, summary."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mura_ens.constants import MANIFEST_COLUMNS
from mura_ens.data.manifest import (
    build_manifest,
    read_manifest,
    scan_source,
    summarize,
    validate_manifest,
    write_manifest,
)
from mura_ens.errors import ManifestError, UsageError

HEADER = "path,study,patient,body_part,label,split\n"


def _write(tmp_path, text, name="m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_scan_source_dispatch(synth_small, tmp_path):
    root = Path(synth_small["root"])
    relabelled = synth_small["relabelled_study"]

    def label_of(result):
        m = result.manifest
        return int(m.loc[m["study"] == relabelled["study"], "label"].iat[0])

    assert label_of(scan_source(root)) == relabelled["csv_label"]  # folder with official CSVs
    assert label_of(scan_source(root.parent)) == relabelled["csv_label"]  # folder holding MURA-v1.1/
    assert label_of(scan_source(root / "train")) == relabelled["folder_label"]  # plain walk
    train_only = scan_source(root / "train_image_paths.csv")  # one official CSV: that split
    assert set(train_only.manifest["split"]) == {"train"}

    result = scan_source(root)
    manifest_path, skipped_path = write_manifest(result.manifest, tmp_path / "m.csv", result.skipped)
    again = scan_source(manifest_path)
    pd.testing.assert_frame_equal(again.manifest, result.manifest)
    assert again.skipped.empty and list(again.skipped.columns)[:2] == ["path", "reason"]
    assert skipped_path.read_text().splitlines()[0] == "path,reason"  # the study columns stay in memory

    with pytest.raises(UsageError, match="not found: .*nope"):
        scan_source(tmp_path / "nope")
    with pytest.raises(UsageError, match="neither"):
        scan_source(_write(tmp_path, "x", "data.txt"))
    with pytest.raises(UsageError, match="--root"):
        scan_source(root / "train", root=tmp_path)


def test_write_manifest_round_trip_and_skipped_csv(tmp_path):
    frame = pd.DataFrame(
        {
            "path": [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
            "study": ["s1", "s2"],
            "patient": ["p1", "p2"],
            "body_part": ["XR_HAND", ""],
            "label": pd.array([1, None], dtype="Int64"),
            "split": ["train", ""],
        }
    )
    out = tmp_path / "sub" / "manifest.csv"
    manifest_path, skipped_path = write_manifest(frame, out)
    assert manifest_path == out and skipped_path == out.parent / "skipped.csv"
    assert skipped_path.read_text() == "path,reason\n"  # always written, header only when empty
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(MANIFEST_COLUMNS)
    assert lines[2].endswith(",p2,,,")  # unknown body part, label and split are empty cells
    back = read_manifest(out)
    pd.testing.assert_frame_equal(back, frame)
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())  # atomic: no leftovers

    skipped = pd.DataFrame({"path": ["/x/._a.png"], "reason": ["appledouble"]})
    write_manifest(frame, out, skipped)
    assert skipped_path.read_text() == "path,reason\n/x/._a.png,appledouble\n"
    with pytest.raises(UsageError):
        write_manifest(frame, tmp_path / "skipped.csv")


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    path = _write(folder, HEADER + "imgs/a.png,s1,p1,xr_wrist,0,TRAIN\n/abs/b.png,s2,p2,,,\n")
    m = read_manifest(path)
    assert m["path"].tolist() == [str(folder / "imgs" / "a.png"), "/abs/b.png"]
    assert m["body_part"].tolist() == ["XR_WRIST", ""]  # case normalised
    assert m["split"].tolist() == ["train", ""]
    other = tmp_path / "elsewhere"
    assert read_manifest(path, root=other)["path"].iat[0] == str(other / "imgs" / "a.png")


def test_split_column_is_optional(tmp_path):
    path = _write(tmp_path, "path,study,patient,body_part,label,extra\na.png,s1,p1,XR_HAND,1,zzz\n")
    m = read_manifest(path)
    assert tuple(m.columns) == MANIFEST_COLUMNS and m["split"].tolist() == [""]


def _problems(tmp_path, text):
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, text))
    error = info.value
    assert "header as row 1" in error.source
    return error.problems


def test_missing_columns(tmp_path):
    problems = _problems(tmp_path, "path,study,label\na.png,s1,1\n")
    assert len(problems) == 1
    assert "missing required column(s) patient, body_part" in problems[0]


def test_each_kind_of_bad_row_names_its_row(tmp_path):
    text = (
        HEADER
        + "\n".join(
            [
                "a.png,s1,p1,XR_HAND,1,train",  # row 2: fine
                "b.png,s2,p2,XR_HAND,x,train",  # row 3: bad label
                "c.png,s3,p3,XR_KNEE,0,train",  # row 4: unknown body part
                "a.png,s4,p4,XR_HAND,0,train",  # row 5: duplicate of row 2
                "d.png,s5,p5,XR_HAND,0,holdout",  # row 6: bad split
                ",s6,p6,XR_HAND,0,",  # row 7: empty path
                "e.png,,p7,XR_HAND,0,",  # row 8: empty study
                "f.png,s1,p1,XR_HAND,0,train",  # row 9: s1 now has labels 1 and 0
                "g.png,s9,p9,XR_HAND,2,train",  # row 10: bad label
            ]
        )
        + "\n"
    )
    problems = _problems(tmp_path, text)
    assert problems == [
        "row 3: label 'x' is not 0, 1 or empty",
        "row 4: body_part 'XR_KNEE' is not one of XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, "
        "XR_SHOULDER, XR_WRIST or empty",
        "row 5: path 'a.png' duplicates row 2",
        "row 6: split 'holdout' is not one of train, valid, test or empty",
        "row 7: path is empty",
        "row 8: study is empty",
        "row 10: label '2' is not 0, 1 or empty",
        "rows 2, 9: study 's1' has more than one label ('0', '1')",
    ]


def test_duplicate_after_resolving(tmp_path):
    text = HEADER + f"a.png,s1,p,XR_HAND,1,\n{tmp_path / 'a.png'},s2,p,XR_HAND,1,\n"
    assert _problems(tmp_path, text) == [f"row 3: path '{tmp_path / 'a.png'}' duplicates row 2"]


def test_empty_and_unparsable_files(tmp_path):
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(_write(tmp_path, ""))
    with pytest.raises(UsageError, match="not found"):
        read_manifest(tmp_path / "none.csv")


def test_validate_in_memory_frame(synth_small):
    m = scan_source(synth_small["root"]).manifest
    assert validate_manifest(m, "synth") == []
    broken = m.copy()
    broken.loc[3, "body_part"] = "XR_NOSE"
    assert validate_manifest(broken, "synth") == [
        "row 5: body_part 'XR_NOSE' is not one of XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, "
        "XR_SHOULDER, XR_WRIST or empty",
        f"rows {_rows_of(m, m.loc[3, 'study'])}: study {m.loc[3, 'study']!r} has more than one body_part "
        f"({', '.join(repr(v) for v in sorted({m.loc[3, 'body_part'], 'XR_NOSE'}))})",
    ]


def _rows_of(m, study):
    return ", ".join(str(i + 2) for i in m.index[m["study"] == study])


def test_summarize(synth_small):
    m = scan_source(synth_small["root"]).manifest
    table = summarize(m)
    assert list(table.index)[-1] == "all"
    assert table.loc["all", "images"] == len(m)
    assert table.loc["all", "studies"] == m["study"].nunique()
    for part in m["body_part"].unique():
        sub = m[m["body_part"] == part]
        studies = sub.drop_duplicates("study")
        assert table.loc[part, "images_abnormal"] == (sub["label"] == 1).sum()
        assert table.loc[part, "studies_normal"] == (studies["label"] == 0).sum()
        assert table.loc[part, "studies_unknown"] == 0
    counts = synth_small["counts"]
    assert table.loc["XR_HAND", "studies_abnormal"] == sum(counts[s]["XR_HAND"]["abnormal"] for s in counts)


def test_summarize_unknown_labels_and_parts():
    m = pd.DataFrame(
        {
            "path": ["/a", "/b", "/c"],
            "study": ["s1", "s1", "s2"],
            "patient": ["", "", ""],
            "body_part": ["", "", "XR_HAND"],
            "label": pd.array([None, None, 1], dtype="Int64"),
            "split": ["", "", ""],
        }
    )
    table = summarize(m)
    assert list(table.index) == ["XR_HAND", "(unknown)", "all"]
    assert table.loc["(unknown)", "images_unknown"] == 2 and table.loc["(unknown)", "studies_unknown"] == 1
    assert table.loc["all", "studies"] == 2


def test_build_manifest(synth_small, tmp_path):
    result = build_manifest(synth_small["root"], tmp_path / "out" / "manifest.csv")
    assert result["manifest"].is_file() and result["skipped_csv"].is_file()
    assert result["n_skipped"] == 1 and result["skipped_reasons"] == {"appledouble": 1}
    total = sum(t["images"] for t in synth_small["totals"].values())
    assert result["n_images"] == total == len(read_manifest(result["manifest"]))
    assert os.path.dirname(result["skipped_csv"]) == os.path.dirname(result["manifest"])


def test_shipped_examples_are_valid():
    folder = Path(__file__).resolve().parents[1] / "manifests"
    assert read_manifest(folder / "template.csv").empty
    mura = read_manifest(folder / "example_mura.csv")
    assert mura["path"].iat[0] == str(folder / "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png")
    assert mura["study"].nunique() == 4 and (mura.groupby("study")["body_part"].nunique() == 1).all()
    assert mura.loc[mura["patient"] == "patient00001", "body_part"].nunique() == 2
    clinic = read_manifest(folder / "example_clinic.csv")
    assert clinic["split"].eq("").all() and clinic["label"].isna().sum() == 3
    assert summarize(clinic).loc["(unknown)", "images"] == 1
