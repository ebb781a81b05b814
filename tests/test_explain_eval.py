"""Heatmap quality against ground-truth findings (`mura-ens explain-eval`, `score --findings`, `--explain all`):
the pointing-game / energy-share / baseline arithmetic on hand-made maps and boxes, the patient bootstrap, path
matching, and the command end to end on tiny CAM models (no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from onnx_graphs import make_explain_run
from scoring_fixtures import ENSEMBLE_LAYOUT, make_tree
from test_explain_scoring import run_cli, studies_frame

from mura_ens.api import score
from mura_ens.explain.evaluate import (
    Findings,
    area_share,
    bootstrap_ci,
    energy_share,
    image_scores,
    patient_of,
    pointing_hit,
)
from mura_ens.scoring.explain_select import HIGHEST, LABELLED_ABNORMAL, select_studies

# ----------------------------------------------------------------------------------------- arithmetic


def test_pointing_game_hit_miss_tolerance_and_empty_map():
    heat = np.zeros((100, 80), np.float32)
    heat[50, 40] = 2.0  # row 50, column 40: (x, y) = (40, 50)
    assert pointing_hit(heat, [(35, 45, 45, 55)])  # inside
    assert pointing_hit(heat, [(40, 50, 40, 50)])  # a one-pixel box, inclusive
    assert not pointing_hit(heat, [(0, 0, 10, 10)])  # far away
    assert pointing_hit(heat, [(46, 50, 60, 60)], grow=15) and not pointing_hit(heat, [(46, 50, 60, 60)], grow=5)
    assert pointing_hit(heat, [(55, 50, 60, 60)]) and not pointing_hit(heat, [(56, 50, 60, 60)])  # 15 px exactly
    assert pointing_hit(heat, [(0, 0, 5, 5), (38, 48, 39, 49)])  # any of the image's boxes
    assert not pointing_hit(np.zeros((100, 80)), [(0, 0, 79, 99)])  # an all-zero map is a miss
    assert not pointing_hit(np.full((10, 10), np.nan), [(0, 0, 9, 9)])
    # boxes grown past the border are clipped; ties: a maximum inside the box counts
    tied = np.ones((20, 20))
    assert pointing_hit(tied, [(0, 0, 0, 0)], grow=0)


def test_energy_share_and_baselines():
    heat = np.zeros((10, 20))
    heat[2:4, 5:10] = 1.0  # 10 cells of mass 1
    heat[8, 0] = 10.0
    heat[0, 0] = -5.0  # negative evidence is not mass
    assert energy_share(heat, [(5, 2, 9, 3)]) == pytest.approx(10 / 20)
    assert energy_share(heat, [(5, 2, 9, 3), (0, 8, 0, 8)]) == pytest.approx(1.0)
    assert energy_share(np.zeros((5, 5)), [(0, 0, 4, 4)]) == 0.0
    assert area_share((10, 20), [(0, 0, 9, 4)]) == pytest.approx(50 / 200)
    assert area_share((10, 20), [(0, 0, 9, 4), (5, 0, 14, 4)]) == pytest.approx(75 / 200)  # the union
    assert area_share((10, 20), [(10, 5, 10, 5)], grow=15) == 1.0  # grown and clipped: the whole image
    scores = image_scores(heat, [(5, 2, 9, 3)], grow=1)
    assert scores == {
        "pointing_game": 0.0,  # the maximum is at (0, 8)
        "pointing_baseline": pytest.approx(7 * 4 / 200),
        "energy_share": pytest.approx(0.5),
        "energy_baseline": pytest.approx(10 / 200),
    }


def test_bootstrap_resamples_patients_and_patients_come_from_paths():
    values = np.array([1.0, 1.0, 1.0, 0.0])
    low, high = bootstrap_ci(values, ["p1", "p1", "p1", "p2"], n_boot=500)
    assert low == 0.0 and high == 1.0  # two patients: either one alone can be drawn twice
    assert bootstrap_ci(np.ones(5), list("abcde")) == [1.0, 1.0]
    assert patient_of("/x/MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png") == "patient11185"


def test_findings_match_on_the_mura_relative_suffix():
    frame = pd.DataFrame(
        [
            ("MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/image1.png", "fracture", 1, 2, 3, 4),
            ("MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/image1.png", "hardware", 5, 6, 7, 8),
        ],
        columns=["path", "kind", "x0", "y0", "x1", "y1"],
    )
    findings = Findings.from_frame(frame)
    assert findings.of("/data/MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/image1.png") == (
        (1, 2, 3, 4),
        (5, 6, 7, 8),
    )
    assert findings.of("C:\\copy\\XR_WRIST\\patient1\\study1_positive\\image1.png")  # 4 components, Windows
    assert findings.of("/data/MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/image2.png") == ()
    with pytest.raises(ValueError, match="missing column"):
        Findings.from_frame(frame.drop(columns=["x1"]))


def test_explain_all_adds_every_labelled_abnormal_study():
    studies = studies_frame(
        [("a", 1, 0.9, 1, "ok"), ("b", 1, 0.1, 0, "ok"), ("c", 0, 0.2, 0, "ok"), ("d", 1, None, None, "failed")]
    )
    chosen = {s.study: s.reasons for s in select_studies(studies, 1, every_abnormal=True)}
    assert chosen["a"] == (LABELLED_ABNORMAL, HIGHEST) and LABELLED_ABNORMAL in chosen["b"]
    assert "c" not in chosen and "d" not in chosen
    assert select_studies(studies, 0, every_abnormal=True)[0].study == "a"


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> SimpleNamespace:
    """`score --explain all --findings` of a labelled tree with two CAM models; findings.csv boxes every abnormal
    image's full frame (a hit for any non-empty map) and, for one image, a corner box."""
    from mura_ens.data.images import decode

    root = tmp_path_factory.mktemp("explain_eval")
    tree = make_tree(root / "data", ENSEMBLE_LAYOUT)
    models = root / "models"
    make_explain_run(models / "explain_a", input_size=32)
    make_explain_run(models / "explain_b", input_size=48)
    rows = []
    for path in sorted(tree.rglob("*_positive/*.png")):
        width, height = decode(str(path)).size
        relative = path.relative_to(tree.parent.parent).as_posix()  # MURA-v1.1/valid/...
        rows.append((relative, "fracture", 0, 0, width - 1, height - 1))
    findings = root / "findings.csv"
    pd.DataFrame(rows, columns=["path", "kind", "x0", "y0", "x1", "y1"]).to_csv(findings, index=False)
    out = root / "out"
    result = score(
        tree, out, models=models, bootstrap=0, batch_size=4, explain="all", findings=findings, progress=False
    )
    return SimpleNamespace(root=root, tree=tree, out=out, findings=findings, result=result, n=len(rows))


def test_score_explain_all_writes_a_raw_map_per_abnormal_image_and_scores_them(scored):
    index = pd.read_csv(scored.out / "heatmaps" / "index.csv", keep_default_na=False)
    abnormal = index.loc[index["label"] == 1]
    assert len(abnormal) == scored.n and (abnormal["npy"] != "").all()
    for row in abnormal.itertuples():
        assert (scored.out / row.npy).is_file() and (scored.out / row.models_npz).is_file()
    result = json.loads((scored.out / "heatmaps" / "explain_eval.json").read_text())
    ensemble = result["sources"]["ensemble"]
    assert ensemble["images"] == scored.n and set(result["sources"]) == {"ensemble", "explain_a", "explain_b"}
    assert ensemble["pointing_baseline"]["mean"] == 1.0 and ensemble["energy_baseline"]["mean"] == 1.0
    nonzero = (abnormal["map_max"].astype(float) > 0).mean()
    assert ensemble["pointing_game"]["mean"] == pytest.approx(nonzero)  # full-frame boxes: hit unless empty
    assert any("--findings: ensemble pointing game" in note for note in scored.result.notes)
    html = (scored.out / "report.html").read_text(encoding="utf-8")
    assert "Localisation against ground-truth findings" in html and "pointing game" in html


def test_explain_eval_cli_matches_score_and_writes_json(scored, tmp_path):
    target = tmp_path / "eval.json"
    code, out, err = run_cli(["explain-eval", str(scored.out), "--findings", str(scored.findings), "-o", str(target)])
    assert code == 0, err
    assert out.splitlines()[1].startswith("ensemble") and f"wrote {target}" in out
    again = json.loads(target.read_text())
    first = json.loads((scored.out / "heatmaps" / "explain_eval.json").read_text())
    assert again["sources"] == first["sources"]


def test_explain_eval_corner_boxes_are_scored_against_the_map(scored, tmp_path):
    """A box in one corner of every abnormal image: the pointing game equals a direct recomputation."""
    index = pd.read_csv(scored.out / "heatmaps" / "index.csv", keep_default_na=False)
    index = index.loc[index["npy"] != ""]
    rows, hits = [], []
    for row in index.itertuples():
        heat = np.load(scored.out / row.npy)
        relative = "/".join(Path(row.image).parts[-5:])
        rows.append((relative, "lesion", 0, 0, 9, 9))
        hits.append(heat[:25, :25].max() >= heat.max() > 0)
    findings = tmp_path / "corner.csv"
    pd.DataFrame(rows, columns=["path", "kind", "x0", "y0", "x1", "y1"]).to_csv(findings, index=False)
    code, _, err = run_cli(["explain-eval", str(scored.out), "--findings", str(findings), "-o", str(tmp_path / "e")])
    assert code == 0, err
    result = json.loads((tmp_path / "e").read_text())
    assert result["sources"]["ensemble"]["pointing_game"]["mean"] == pytest.approx(np.mean(hits))


def test_explain_eval_errors_are_one_line(scored, tmp_path):
    code, _, err = run_cli(["explain-eval", str(scored.out), "--findings", str(tmp_path / "nope.csv")])
    assert code == 2 and err.strip().endswith("does not exist") and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.csv"
    pd.DataFrame(
        [("MURA-v1.1/valid/XR_HAND/patient9/study1_positive/image1.png", "x", 0, 0, 1, 1)],
        columns=["path", "kind", "x0", "y0", "x1", "y1"],
    ).to_csv(other, index=False)
    code, _, err = run_cli(["explain-eval", str(scored.out), "--findings", str(other)])
    assert code == 2 and "has a row in the findings file" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["explain-eval", str(tmp_path), "--findings", str(scored.findings)])
    assert code == 2 and "score with --explain all first" in err
    pd.DataFrame({"path": ["a"]}).to_csv(other, index=False)
    code, _, err = run_cli(["explain-eval", str(scored.out), "--findings", str(other)])
    assert code == 2 and "missing column(s) kind, x0, y0, x1, y1" in err


def test_map_notes_follow_the_maximum_and_probability(scored):
    index = pd.read_csv(scored.out / "heatmaps" / "index.csv", keep_default_na=False)
    drawn = index.loc[index["png"] != ""]
    top, prob = drawn["map_max"].astype(float), drawn["image_prob"].astype(float)
    expected = np.where(top <= 0, "no positive evidence", np.where(prob < 0.5, "weak evidence", ""))
    assert (drawn["map_note"].to_numpy() == expected).all()
    assert (drawn["map_size"] == "16x16;24x24").all()


def test_small_feature_maps_are_warned_once_per_model(scored, tmp_path):
    models = tmp_path / "models"
    make_explain_run(models / "coarse", input_size=6)  # a 3x3 feature map
    result = score(scored.tree, tmp_path / "out", models=models, bootstrap=0, explain=1, progress=False)
    notes = [note for note in result.notes if "smaller than 4x4" in note]
    assert len(notes) == 1 and "model coarse's heatmaps come from a 3x3 feature map" in notes[0], result.notes


def test_score_refuses_bad_explain_and_findings_before_any_work(scored, tmp_path):
    args = ["score", str(scored.tree), "--models", str(scored.root / "models"), "--out", str(tmp_path / "o")]
    code, _, err = run_cli([*args, "--explain", "some"])
    assert code == 2 and "--explain must be an integer >= 0 (studies per group) or all, got 'some'" in err
    code, _, err = run_cli([*args, "--findings", str(scored.findings)])
    assert code == 2 and "--findings scores heatmaps: give --explain all" in err
    code, _, err = run_cli([*args, "--explain", "all", "--findings", str(tmp_path / "none.csv")])
    assert code == 2 and "does not exist" in err and not (tmp_path / "o").exists()
    code, _, err = run_cli([*args, "--explain", "1", "--explain-method", "saliency"])
    assert code == 2 and "unknown --explain-method 'saliency'; choose one of xgradcam, hirescam, gradcam" in err
    assert not (tmp_path / "o").exists()
