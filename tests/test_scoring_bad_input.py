"""Bad input: every image and study appears in the output with a status; bad images never stop a run."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from scoring_fixtures import (
    png_claiming_size,
    random_image,
    read_images,
    read_studies,
    study_folder,
    write_png,
)

from mura_ens.errors import ManifestError, UsageError
from mura_ens.metrics import UndefinedMetricWarning
from mura_ens.scoring.score import ScoreSettings, score


@pytest.fixture(scope="module")
def broken_tree(tmp_path_factory):
    """A valid split with one file of every kind of damage; returns (valid folder, {kind: path})."""
    root = tmp_path_factory.mktemp("broken")
    rng = np.random.default_rng(0)
    files = {}
    good = study_folder(root, "valid", "XR_HAND", 11001, 1, 1)
    write_png(good / "image1.png", random_image(rng))
    files["truncated"] = write_png(good / "image2.png", random_image(rng, rgb=True))
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) * 2 // 3])
    files["empty_file"] = good / "image3.png"
    files["empty_file"].write_bytes(b"")
    files["appledouble"] = good / "._image1.png"
    files["appledouble"].write_bytes(b"\x00\x05\x16\x07" + bytes(100))

    mixed = study_folder(root, "valid", "XR_WRIST", 11002, 1, 0)
    write_png(mixed / "image1.png", random_image(rng))
    files["not_an_image"] = mixed / "image2.png"
    files["not_an_image"].write_text("this is a text file with a .png name\n")
    files["too_large"] = png_claiming_size(mixed / "image3.png", 9_000, 9_000)  # > 64 Mpx, < Pillow's own guard
    files["unreadable"] = mixed / "image4.png"
    os.symlink(mixed / "does_not_exist.png", files["unreadable"])

    failed = study_folder(root, "valid", "XR_WRIST", 11003, 1, 1)  # every image bad
    (failed / "image1.png").parent.mkdir(parents=True)
    (failed / "image1.png").write_bytes(b"")
    (failed / "image2.png").write_text("nope")

    files["empty_study"] = study_folder(root, "valid", "XR_ELBOW", 11004, 1, 1)
    files["empty_study"].mkdir(parents=True)

    shoulder = study_folder(root, "valid", "XR_SHOULDER", 11005, 1, 0)
    write_png(shoulder / "image1.png", random_image(rng))
    write_png(shoulder / "image2.png", random_image(rng, rgb=True))
    return root / "MURA-v1.1" / "valid", files


def test_every_bad_file_gets_its_status_and_the_run_goes_on(broken_tree, tiny_models, tmp_path):
    valid, files = broken_tree
    result = score(valid, models_dir=tiny_models["gen_a"].parents[1], out=tmp_path, progress=False)
    images = read_images(tmp_path)
    status = dict(zip(images["path"], images["status"]))
    for kind, path in files.items():
        if kind != "empty_study":
            assert status[str(path)] == kind, kind
    errors = images.set_index("path")["error"]
    assert "9000x9000" in errors[str(files["too_large"])]
    assert errors[str(files["appledouble"])]  # the skip reason is explained
    # files the scan skipped carry the study the scan found for them
    rows = images.set_index("path")
    apple = rows.loc[str(files["appledouble"]), ["study", "patient", "body_part", "label"]].tolist()
    assert apple == ["valid/XR_HAND/patient11001/study1", "patient11001", "XR_HAND", 1]
    empty_row = rows.loc[str(files["empty_study"]), ["study", "status", "label"]].tolist()
    assert empty_row == ["valid/XR_ELBOW/patient11004/study1", "empty_study", 1]
    # bad rows have no probability; the good ones of the same study are scored
    bad = images[images["status"] != "ok"]
    assert bad.filter(like="prob").isna().all().all()
    hand_ok = images[(images["status"] == "ok") & (images["body_part"] == "XR_HAND")]
    assert len(hand_ok) == 1 and hand_ok["prob"].notna().all()
    # every file of the input is a row, exactly once
    on_disk = {str(p) for p in valid.rglob("*") if p.is_file() or p.is_symlink()}
    assert on_disk <= set(images["path"]) and images["path"].is_unique

    studies = read_studies(tmp_path).set_index("study")
    assert studies.loc["valid/XR_HAND/patient11001/study1", "status"] == "ok"
    assert studies.loc["valid/XR_HAND/patient11001/study1", ["n_images", "n_scored"]].tolist() == [3, 1]
    assert studies.loc["valid/XR_WRIST/patient11002/study1", ["n_images", "n_scored"]].tolist() == [4, 1]
    failed = studies.loc["valid/XR_WRIST/patient11003/study1"]
    assert failed["status"] == "all_images_failed" and np.isnan(failed["prob"]) and pd.isna(failed["pred"])
    empty = studies.loc["valid/XR_ELBOW/patient11004/study1"]
    assert empty["status"] == "empty_study" and empty["n_images"] == 0 and np.isnan(empty["prob"])
    assert len(studies) == 5
    # metrics leave the unscored studies out and count them
    assert result.metrics["study"]["overall"]["n"] == 3
    assert result.metrics["study"]["overall"]["n_excluded"] == 2


def test_parts_no_model_serves_are_listed_not_scored(broken_tree, tiny_models, tmp_path):
    valid, _ = broken_tree
    with pytest.warns(UndefinedMetricWarning, match="only one class"):  # one hand study: AUC undefined
        score(valid, model_files=[tiny_models["spec_hand"]], out=tmp_path, progress=False)
    images, studies = read_images(tmp_path), read_studies(tmp_path)
    shoulder = images[images["body_part"] == "XR_SHOULDER"]
    assert len(shoulder) == 2 and (shoulder["status"] == "no_model_for_body_part").all()
    assert shoulder["error"].str.contains("XR_SHOULDER").all()
    assert shoulder["prob"].isna().all()
    by_part = studies.set_index("body_part")["status"]
    assert by_part["XR_SHOULDER"] == "no_model_for_body_part"
    # files that are broken AND unserved are reported as unserved: they were never opened
    wrist = images[images["body_part"] == "XR_WRIST"]
    assert (wrist["status"] == "no_model_for_body_part").all()


def test_unknown_body_part_in_a_manifest(tiny_models, tmp_path):
    rng = np.random.default_rng(1)
    a = write_png(tmp_path / "img" / "a.png", random_image(rng))
    b = write_png(tmp_path / "img" / "b.png", random_image(rng))
    missing = tmp_path / "img" / "gone.png"
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "path": ["img/a.png", "img/b.png", "img/gone.png"],
            "study": ["s1", "s2", "s2"],
            "patient": ["p1", "p2", "p2"],
            "body_part": ["", "XR_HAND", "XR_HAND"],
            "label": ["1", "", ""],
        }
    ).to_csv(manifest, index=False)
    # specialists only: the unknown part has no model
    score(manifest, model_files=[tiny_models["spec_hand"]], out=tmp_path / "o1", progress=False)
    images = read_images(tmp_path / "o1").set_index("path")
    assert images.loc[str(a), "status"] == "no_model_for_body_part"
    assert "unknown body part" in images.loc[str(a), "error"]
    assert images.loc[str(b), "status"] == "ok"
    assert images.loc[str(missing), "status"] == "unreadable"
    # with a generalist the unknown part is scored; no labels on s2 -> metrics only on s1
    result = score(manifest, model_files=[tiny_models["gen_a"]], out=tmp_path / "o2", progress=False)
    studies = read_studies(tmp_path / "o2").set_index("study")
    assert studies.loc["s1", "status"] == "ok" and studies.loc["s1", "body_part"] == ""
    assert result.metrics["study"]["overall"]["n"] == 1


def test_unlabelled_input_writes_no_metrics_and_removes_a_stale_file(tiny_models, tmp_path):
    rng = np.random.default_rng(2)
    write_png(tmp_path / "img" / "a.png", random_image(rng))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,study,patient,body_part,label\nimg/a.png,s1,p1,XR_HAND,\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # from some earlier run
    result = score(manifest, model_files=[tiny_models["gen_a"]], out=out, progress=False)
    assert result.metrics is None and not (out / "metrics.json").exists()
    assert any("metrics.json" in note for note in result.notes)
    assert (out / "report.html").is_file() and read_studies(out)["prob"].notna().all()


def test_manifest_missing_a_column_stops_at_once(tiny_models, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,study,label\na.png,s1,1\n")
    with pytest.raises(ManifestError, match="patient"):
        score(manifest, models_dir=tiny_models["gen_a"].parents[1], out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_unusable_arguments_stop_before_any_output(tiny_models, tmp_path):
    with pytest.raises(UsageError, match="nope"):
        score(tmp_path / "nope", models_dir=tiny_models["gen_a"].parents[1], out=tmp_path / "o", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no images found"):
        score(empty, models_dir=tiny_models["gen_a"].parents[1], out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, r"--batch-size must be an integer >= 1, got 0$"),
        ("batch_size", 2.5, r"--batch-size must be an integer >= 1, got 2.5$"),
        ("workers", 0, r"--workers must be an integer >= 1, got 0$"),
        ("threshold", 1.5, r"--threshold must be in \[0, 1\], got 1.5$"),
        ("ensemble", "median", r"unknown ensemble 'median'; choose one of body_part, mean, fitted$"),
        ("precision", "fp16", r"unknown precision 'fp16'; choose one of fp32, int8$"),
        ("tta", "rotate", r"unknown --tta 'rotate'; choose one of none, flip$"),
        (
            "ensemble_file",
            "e.json",
            r"--ensemble-file is only used with --ensemble fitted, not with --ensemble body_part$",
        ),
    ],
)
def test_score_settings_refuse_a_bad_value_in_one_line_naming_it(field, value, message):
    with pytest.raises(UsageError, match=message) as caught:
        ScoreSettings(**{field: value})
    assert "\n" not in str(caught.value)


def test_score_settings_are_frozen_and_normalised():
    import dataclasses

    from mura_ens.metrics import BootstrapSettings

    settings = ScoreSettings(providers="cpu", threshold=1, workers=3)
    assert settings.providers == ("cpu",) and settings.threshold == 1.0 and type(settings.threshold) is float
    assert settings.decode_workers == 3
    assert ScoreSettings(providers=["cuda", "cpu"]).providers == ("cuda", "cpu")
    assert ScoreSettings().bootstrap == BootstrapSettings(n_resamples=1000, ci=0.95, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 4


def test_synthetic_quirks_appear_with_a_non_ok_status(tiny_models, tmp_path):
    from mura_ens.data.synth import make_synthetic_mura

    summary = make_synthetic_mura(tmp_path / "synth", studies_per_part=2, size=32, seed=5)
    quirks = summary["quirk_files"]
    assert set(quirks) >= {"appledouble", "truncated", "zero_byte"}
    score(summary["root"], models_dir=tiny_models["gen_a"].parents[1], out=tmp_path / "o", progress=False)
    images = read_images(tmp_path / "o").set_index("path")
    for kind, path in quirks.items():
        assert images.loc[path, "status"] not in ("ok", ""), kind
    assert images.loc[quirks["appledouble"], "status"] == "appledouble"  # in a listed study folder
    assert images.loc[quirks["zero_byte"], "status"] == "empty_file"
    assert images.loc[quirks["truncated"], "status"] == "truncated"
