"""Synthetic MURA, ``mura`` difficulty (the default) and ``findings.csv``: boxes hold what is drawn, nothing is
drawn without a row, MURA's per-part proportions, determinism, and ``easy`` unchanged byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mura_ens.constants import BODY_PARTS
from mura_ens.data import synth
from mura_ens.data.official import read_official
from mura_ens.data.synth import FINDINGS_CSV, make_synthetic_mura, mura_counts, render_image
from mura_ens.data.synth_lesions import FINDING_KINDS
from mura_ens.data.synth_marks import glyphs
from mura_ens.data.synth_mura import MURA_TRAIN_STUDIES, Finding, render_mura

#: sha256 of the ``easy`` trees and renders as the code made them before the ``mura`` difficulty existed
#: (recorded from commit 7bdada1; findings.csv, new, is left out of the tree digest).
EASY_TREE_SHA256 = {
    (6, 64, 3, True, 0.2): "538cc672a7635933cbbe5a39e48c5598040b7ad345d1cd80cf248efe48155e6f",
    (3, 32, 1, False, 0.2): "e6ced1bb4c195b7740c401b63eab69f522da320767f45024a07f715f868c862c",
}
EASY_RENDER_SHA256 = "f60c562b63ca3f8cb15668b90b96a7824fb4566c908b9f502e4579193e2c9ec4"


def _tree_sha256(root: str | Path) -> str:
    digest = hashlib.sha256()
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != FINDINGS_CSV:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("args", sorted(EASY_TREE_SHA256))
def test_easy_is_byte_for_byte_what_it_was(tmp_path, args):
    n, size, seed, quirks, valid_fraction = args
    summary = make_synthetic_mura(
        tmp_path, studies_per_part=n, size=size, seed=seed, quirks=quirks, valid_fraction=valid_fraction,
        difficulty="easy",
    )  # fmt: skip
    assert _tree_sha256(summary["root"]) == EASY_TREE_SHA256[args]
    digest = hashlib.sha256()
    for part in ("XR_WRIST", "XR_HAND"):
        for injury in ("", "fracture", "metal", "both"):
            digest.update(render_image(np.random.default_rng(5), part, 96, injury=injury).tobytes())
    assert digest.hexdigest() == EASY_RENDER_SHA256


def test_easy_writes_findings_for_its_injuries(synth_small):
    rows = pd.read_csv(Path(synth_small["root"]) / FINDINGS_CSV)
    assert list(rows.columns) == ["path", "kind", "x0", "y0", "x1", "y1"]
    assert set(rows["kind"]) == {"fracture", "hardware"}
    listed = set("".join(Path(p).read_text() for k, p in synth_small["csv"].items() if "image" in k).split())
    assert set(rows["path"]) <= listed
    # Hardware is near-white metal: the brightest pixel of the image lies in its box.
    root = Path(synth_small["root"]).parent
    for row in rows.loc[rows["kind"] == "hardware"].head(8).itertuples():
        with Image.open(root / row.path) as image:
            pixels = np.asarray(image.convert("L"))
        y, x = np.unravel_index(int(np.argmax(pixels)), pixels.shape)
        assert row.x0 <= x <= row.x1 and row.y0 <= y <= row.y1


@pytest.mark.parametrize("kind", FINDING_KINDS)
def test_a_finding_changes_pixels_only_inside_its_box(kind):
    """The same image with and without the finding: the difference is non-zero inside the box, zero outside."""
    shown = 0
    for i, part in enumerate(BODY_PARTS):
        plain = render_mura(1000 + i, part, 96)
        rendered = render_mura(1000 + i, part, 96, [Finding(kind, seed=77 + i, strength=0.8)])
        assert plain.boxes == []
        diff = np.abs(rendered.pixels.astype(int) - plain.pixels.astype(int))
        diff = diff.max(axis=2) if diff.ndim == 3 else diff
        if not rendered.boxes:  # hidden under collimation or a mark: nothing may show
            assert diff.max() == 0
            continue
        ((drawn, (x0, y0, x1, y1)),) = rendered.boxes
        assert drawn == kind and 0 <= x0 <= x1 < diff.shape[1] and 0 <= y0 <= y1 < diff.shape[0]
        inside = np.zeros(diff.shape, dtype=bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        assert diff[~inside].max(initial=0) == 0
        assert diff[inside].max() > 0
        shown += 1
    assert shown >= 5  # most views show it


def test_findings_are_local():
    """A finding is a small part of the image: its box covers a few percent of it, never most of it."""
    areas = []
    for i in range(21):
        part, kind = BODY_PARTS[i % 7], FINDING_KINDS[i % 5]
        rendered = render_mura(i, part, 128, [Finding(kind, seed=i)])
        height, width = rendered.pixels.shape[:2]
        areas += [(x1 - x0 + 1) * (y1 - y0 + 1) / (height * width) for _, (x0, y0, x1, y1) in rendered.boxes]
    assert len(areas) >= 15
    assert np.median(areas) < 0.15 and max(areas) < 0.35


@pytest.fixture(scope="module")
def mura_tree(tmp_path_factory):
    """A small ``mura`` tree; every render call recorded next to the PNG it was saved as."""
    calls: list[dict] = []
    render, save = synth.render_mura, synth._save_png

    def recording_render(seed, part, size, findings=()):
        rendered = render(seed, part, size, findings)
        plain = render(seed, part, size) if findings else rendered
        changed = not np.array_equal(plain.pixels, rendered.pixels)
        calls.append({"boxes": rendered.boxes, "changed": changed})
        return rendered

    def recording_save(path, pixels):
        calls[-1]["path"] = str(path)
        save(path, pixels)

    mp = pytest.MonkeyPatch()
    mp.setattr(synth, "render_mura", recording_render)
    mp.setattr(synth, "_save_png", recording_save)
    try:
        out = tmp_path_factory.mktemp("mura")
        summary = make_synthetic_mura(out, studies_per_part=10, size=64, seed=11)
    finally:
        mp.undo()
    return summary, calls


def test_no_finding_is_drawn_without_a_row(mura_tree):
    summary, calls = mura_tree
    root = Path(summary["root"])
    rows = pd.read_csv(root / FINDINGS_CSV)
    by_path = rows.groupby("path").size().to_dict()
    for call in calls:
        rel = "MURA-v1.1/" + str(Path(call["path"]).relative_to(root)).replace("\\", "/")
        assert by_path.get(rel, 0) == len(call["boxes"]), rel
        assert call["changed"] == bool(call["boxes"]), rel  # pixels changed <=> at least one row
    assert sum(by_path.values()) == len(rows) == sum(summary["findings"]["rows"].values())
    images = set(read_official(root).manifest["path"])
    assert {str(root.parent / p) for p in rows["path"]} <= images
    assert set(rows["kind"]) <= set(FINDING_KINDS) and len(set(rows["kind"])) >= 3
    assert (
        (rows["x0"] <= rows["x1"]).all() and (rows["y0"] <= rows["y1"]).all() and (rows[["x0", "y0"]] >= 0).all().all()
    )


def test_findings_follow_labels_with_some_noise(mura_tree):
    summary, _ = mura_tree
    root = Path(summary["root"])
    m = read_official(root).manifest
    rows = pd.read_csv(root / FINDINGS_CSV)
    shown = set(str(root.parent / p) for p in rows["path"])
    m["shown"] = m["path"].isin(shown)
    rates = m.groupby("label")["shown"].mean()
    assert rates[1] > 0.5 and rates[0] < 0.15  # most abnormal images show a finding, few normal ones
    per_study = m.groupby(["study", "label"])["shown"].mean().reset_index()
    assert ((per_study["label"] == 1) & (per_study["shown"] < 1) & (per_study["shown"] > 0)).any()  # not every view
    assert 0 < len(summary["label_noise"]) < 0.12 * len(per_study)
    assert 0.6 < summary["feature_rates"]["abnormal"] < 0.95 and summary["feature_rates"]["normal"] < 0.1


def test_counts_follow_mura_proportions(mura_tree):
    summary, _ = mura_tree
    total = sum(sum(pair) for pair in MURA_TRAIN_STUDIES.values())
    counts = mura_counts(200)
    assert abs(sum(n for n, _ in counts.values()) - 7 * 200) <= 4  # studies_per_part is the mean per part
    for part, (normal, abnormal) in MURA_TRAIN_STUDIES.items():
        n, n_abnormal = counts[part]
        assert abs(n / (7 * 200) - (normal + abnormal) / total) < 0.002, part
        assert abs(n_abnormal / n - abnormal / (normal + abnormal)) <= 0.5 / n + 1e-9, part
    scarce = sorted(counts, key=lambda p: counts[p][0])[:2]
    assert set(scarce) == {"XR_HUMERUS", "XR_FOREARM"}
    for part in BODY_PARTS:  # the tree holds what mura_counts says (CSV labels differ by the label noise)
        n = sum(summary["counts"][split][part]["studies"] for split in ("train", "valid"))
        assert n == mura_counts(10)[part][0]
    assert min(n for n, _ in mura_counts(1).values()) >= 2


def test_mura_is_deterministic_per_seed(tmp_path, mura_tree):
    summary, _ = mura_tree
    again = make_synthetic_mura(tmp_path / "a", studies_per_part=10, size=64, seed=11)
    assert _tree_sha256(again["root"]) == _tree_sha256(summary["root"])
    assert (Path(again["root"]) / FINDINGS_CSV).read_bytes() == (Path(summary["root"]) / FINDINGS_CSV).read_bytes()
    other = make_synthetic_mura(tmp_path / "b", studies_per_part=10, size=64, seed=12)
    assert _tree_sha256(other["root"]) != _tree_sha256(summary["root"])
    assert summary["difficulty"] == "mura"


def test_confounders_do_not_follow_the_label():
    """Markers, initials and collimation come from the image's own stream: the same with or without findings."""
    assert glyphs("L", 1).shape == (7, 5) and glyphs("RL", 2).shape == (14, 22)
    for i in range(6):
        plain = render_mura(i, "XR_WRIST", 64).pixels
        sick = render_mura(i, "XR_WRIST", 64, [Finding("hardware", seed=i)]).pixels
        assert plain.shape == sick.shape  # same canvas, same corners, same marks
        corner = (slice(0, 6), slice(0, 6))
        assert np.array_equal(plain[corner], sick[corner])


def test_cli_difficulty(tmp_path, capsys):
    from mura_ens.cli.main import main

    assert main(["synth", str(tmp_path / "m"), "--studies-per-part", "3", "--size", "32", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "findings:" in out and str(tmp_path / "m" / "MURA-v1.1" / FINDINGS_CSV) in out
    easy = ["synth", str(tmp_path / "e"), "--studies-per-part", "3", "--size", "32", "--difficulty", "easy"]
    assert main(easy) == 0
    assert json.loads((tmp_path / "e" / "synth_summary.json").read_text())["difficulty"] == "easy"
    assert main(["synth", str(tmp_path / "x"), "--difficulty", "hard"]) == 2
    assert "difficulty must be one of mura, easy" in capsys.readouterr().err
