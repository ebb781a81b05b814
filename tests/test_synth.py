"""Synthetic MURA, ``easy`` difficulty: layout, determinism, class ratios, quirks, learnability preconditions.

The ``mura`` difficulty (the default) and findings.csv: tests/test_synth_mura.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mura_ens.constants import BODY_PARTS
from mura_ens.data.images import ImageError, decode, resize_rgb
from mura_ens.data.layout import walk_mura
from mura_ens.data.official import read_official
from mura_ens.data.synth import ABNORMAL_RATIOS, make_synthetic_mura, render_image
from mura_ens.errors import UsageError


def _tree_bytes(root) -> dict[str, bytes]:
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """12 studies per part: the size the issue says must take seconds."""
    out = tmp_path_factory.mktemp("synth12")
    start = time.perf_counter()
    summary = make_synthetic_mura(out, studies_per_part=12, size=64, seed=7, difficulty="easy")
    summary["seconds"] = time.perf_counter() - start
    return summary


def test_fast(medium):
    assert medium["seconds"] < 15


def test_layout_and_official_csvs(synth_small):
    root = Path(synth_small["root"])
    assert sorted(p.name for p in root.iterdir()) == [
        "findings.csv",
        "train",
        "train_image_paths.csv",
        "train_labeled_studies.csv",
        "valid",
        "valid_image_paths.csv",
        "valid_labeled_studies.csv",
    ]
    for split in ("train", "valid"):
        assert sorted(p.name for p in (root / split).iterdir()) == list(BODY_PARTS)
        images = (root / f"{split}_image_paths.csv").read_text().splitlines()
        assert all(line.startswith(f"MURA-v1.1/{split}/XR_") and line.endswith(".png") for line in images)
        studies = (root / f"{split}_labeled_studies.csv").read_text().splitlines()
        assert all(line.endswith(("/,0", "/,1")) for line in studies)  # no header, trailing slash
        assert len(studies) == synth_small["totals"][split]["studies"]
        assert len(images) == synth_small["totals"][split]["images"]
    assert json.loads((Path(synth_small["out"]) / "synth_summary.json").read_text()) == synth_small


def test_deterministic_per_seed(tmp_path, synth_small):
    again = make_synthetic_mura(tmp_path / "a", studies_per_part=6, size=64, seed=3, difficulty="easy")
    assert _tree_bytes(again["root"]) == _tree_bytes(synth_small["root"])
    same = {
        k: v for k, v in again.items() if k not in ("out", "root", "quirk_files", "relabelled_study", "csv", "findings")
    }
    assert same == {k: synth_small[k] for k in same}
    assert (
        walk_mura(again["root"]).manifest["study"].tolist() == walk_mura(synth_small["root"]).manifest["study"].tolist()
    )

    other = make_synthetic_mura(tmp_path / "b", studies_per_part=6, size=64, seed=4, difficulty="easy")
    a, b = _tree_bytes(other["root"]), _tree_bytes(synth_small["root"])
    assert a != b
    common = set(a) & set(b)
    assert sum(a[name] != b[name] for name in common if name.endswith(".png")) > 0.9 * len(
        [n for n in common if n.endswith(".png")]
    )


def test_class_ratios_match_mura(medium):
    for part, ratio in ABNORMAL_RATIOS.items():
        studies = sum(medium["counts"][s][part]["studies"] for s in ("train", "valid"))
        abnormal = sum(medium["counts"][s][part]["abnormal"] for s in ("train", "valid"))
        assert studies == 12
        assert abs(abnormal / studies - ratio) <= 0.5 / 12 + 1e-9, part
    # ... and the same counted from disk, through the official CSVs.
    m = read_official(medium["root"]).manifest.drop_duplicates("study")
    for part, ratio in ABNORMAL_RATIOS.items():
        labels = m.loc[m["body_part"] == part, "label"]
        assert abs(labels.mean() - ratio) < 0.05, part
    for split in ("train", "valid"):  # both classes on both sides
        assert set(m.loc[m["split"] == split, "label"]) == {0, 1}


def test_structure(medium):
    m = read_official(medium["root"]).manifest
    per_study = m.groupby("study").size()
    quirk_extra = {os.path.dirname(p) for k, p in medium["quirk_files"].items() if k != "appledouble"}
    normal = per_study[
        [os.path.dirname(m.loc[m["study"] == s, "path"].iat[0]) not in quirk_extra for s in per_study.index]
    ]
    assert normal.min() >= 1 and normal.max() <= 4 and normal.nunique() >= 3
    # Patients never cross splits; ids are numbered like MURA's.
    assert (m.groupby("patient")["split"].nunique() == 1).all()
    train_ids = sorted(int(p[7:]) for p in m.loc[m["split"] == "train", "patient"].unique())
    valid_ids = sorted(int(p[7:]) for p in m.loc[m["split"] == "valid", "patient"].unique())
    assert train_ids[0] == 1 and valid_ids[0] == 11185 and train_ids[-1] < 11185
    assert all(len(p) == len("patient00001") for p in m["patient"])
    # One patient id under two body parts, same split.
    shared = medium["shared_patient"]
    assert shared["split"] == "train" and len(shared["body_parts"]) == 2
    assert m.loc[m["patient"] == shared["patient"], "body_part"].nunique() == 2


def test_image_modes_and_aspect_ratios(medium):
    m = read_official(medium["root"]).manifest
    broken = {medium["quirk_files"]["truncated"], medium["quirk_files"]["zero_byte"]}
    modes, shapes = [], []
    for path in m["path"]:
        if path in broken:
            continue
        with Image.open(path) as img:
            modes.append(img.mode)
            shapes.append(img.size)
    assert set(modes) == {"L", "RGB"}
    assert 0.15 < modes.count("RGB") / len(modes) < 0.45
    assert all(max(size) == 64 for size in shapes)
    ratios = [min(s) / max(s) for s in shapes]
    assert min(ratios) < 0.7 and sum(r < 0.99 for r in ratios) > len(ratios) / 2
    assert any(w > h for w, h in shapes) and any(h > w for w, h in shapes)


def test_quirks(synth_small):
    q = synth_small["quirk_files"]
    assert Path(q["appledouble"]).name == "._image1.png"
    assert (Path(q["appledouble"]).parent / "image1.png").is_file()
    assert os.path.getsize(q["zero_byte"]) == 0
    statuses = {}
    for name in ("appledouble", "truncated", "zero_byte"):
        with pytest.raises(ImageError) as info:
            decode(q[name])
        statuses[name] = info.value.status
    assert statuses == {"appledouble": "not_an_image", "truncated": "truncated", "zero_byte": "empty_file"}
    assert "/valid/" in q["truncated"] and "/train/" in q["zero_byte"]
    listed = "".join(Path(p).read_text() for p in synth_small["csv"].values())
    assert "._image1.png" not in listed
    for name in ("truncated", "zero_byte"):
        assert q[name].split("MURA-v1.1/")[1] in listed

    relabelled = synth_small["relabelled_study"]
    assert relabelled["folder_label"] == 1 - relabelled["csv_label"]
    suffix = "_positive" if relabelled["folder_label"] == 1 else "_negative"
    assert relabelled["path"].endswith(suffix) and os.path.isdir(relabelled["path"])
    csv_line = relabelled["path"].split(os.sep + "MURA-v1.1" + os.sep)[1]
    assert f"MURA-v1.1/{csv_line}/,{relabelled['csv_label']}" in listed


def test_no_quirks(tmp_path):
    summary = make_synthetic_mura(tmp_path, studies_per_part=3, size=32, seed=1, quirks=False)
    assert summary["quirk_files"] == {} and summary["relabelled_study"] is None
    result = walk_mura(summary["root"])
    assert set(result.skipped["reason"]) == {"not_an_image_suffix"}  # only the four CSVs
    for path in result.manifest["path"]:
        decode(path)


def test_bad_arguments_and_existing_output(tmp_path, synth_small):
    with pytest.raises(UsageError, match="studies_per_part"):
        make_synthetic_mura(tmp_path, studies_per_part=0)
    with pytest.raises(UsageError, match="size"):
        make_synthetic_mura(tmp_path, size=8)
    with pytest.raises(UsageError, match="valid_fraction"):
        make_synthetic_mura(tmp_path, valid_fraction=1.0)
    with pytest.raises(UsageError, match="already exists"):
        make_synthetic_mura(synth_small["out"], studies_per_part=6, size=64, seed=3)
    with pytest.raises(UsageError, match="difficulty"):
        make_synthetic_mura(tmp_path, difficulty="hard")
    make_synthetic_mura(tmp_path, studies_per_part=2, size=32, seed=0, difficulty="easy")
    summary = make_synthetic_mura(tmp_path, studies_per_part=2, size=32, seed=0, overwrite=True, difficulty="easy")
    assert summary["totals"]["train"]["studies"] + summary["totals"]["valid"]["studies"] == 14


# ----------------------------------------------------------------- learnability preconditions


def test_abnormal_studies_carry_a_visible_feature(medium):
    """Metal shows as near-white pixels: common in abnormal images, rare in normal ones."""
    m = read_official(medium["root"]).manifest
    broken = {medium["quirk_files"]["truncated"], medium["quirk_files"]["zero_byte"]}
    bright = {0: [], 1: []}
    for path, label in zip(m["path"], m["label"]):
        if path not in broken:
            bright[int(label)].append(np.asarray(decode(path)).max() >= 240)
    assert np.mean(bright[1]) > 0.25
    assert np.mean(bright[0]) < 0.10
    rates = medium["feature_rates"]
    assert 0.75 < rates["abnormal"] < 0.95 and rates["normal"] < 0.12


@pytest.mark.parametrize("part", BODY_PARTS)
def test_injuries_survive_a_64px_resize(part):
    """Same random view with and without an injury: the difference is many pixels wide at 64 px."""
    for seed in range(5):
        plain = render_image(np.random.default_rng(seed), part, 256, injury="")
        fracture = render_image(np.random.default_rng(seed), part, 256, injury="fracture")
        metal = render_image(np.random.default_rng(seed), part, 256, injury="metal")

        def small(pixels):
            return resize_rgb(Image.fromarray(pixels), 64)[..., 0].astype(int)

        assert ((small(plain) - small(fracture)) > 50).sum() >= 20  # a dark line across the bone
        assert ((small(metal) - small(plain)) > 40).sum() >= 30  # a bright blob
        assert small(plain).max() < 235 <= small(metal).max()
