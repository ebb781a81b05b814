"""`mura-ens demo --quick`: the README's main job, end to end (TensorFlow for training, ORT for scoring)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mura_ens.demo import Cell, Comparison

PARTS = {"XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST"}

MURA_ENS = str(Path(sys.executable).with_name("mura-ens"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    proc = subprocess.run([MURA_ENS, "demo", "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _card(out: Path, run: str) -> dict:
    return json.loads((out / "runs" / run / "card.json").read_text())


@pytest.mark.tf
@pytest.mark.slow
def test_demo_trains_generalist_and_warm_started_specialists(demo):
    out, _ = demo
    runs = sorted(p.name for p in (out / "runs").iterdir() if (p / "model.onnx").is_file())
    assert "custom_cnn" in runs
    assert {r.rsplit("-", 1)[-1] for r in runs if r.startswith("specialists-")} == PARTS
    generalist = _card(out, "custom_cnn")
    for run in runs:
        card = _card(out, run)
        assert card["onnx_max_abs_diff"] <= 1e-4
        if run == "custom_cnn":
            assert "init_from" not in card
            continue
        # every specialist is the generalist's architecture, started from its weights, fine-tuned at 0.1 x its lr
        assert card["init_from"]["run_dir"] == str(out / "runs" / "custom_cnn")
        assert card["init_from"]["model_sha256"] == card_sha(out / "runs" / "custom_cnn" / "model.onnx")
        assert card["config"]["params"] == generalist["config"]["params"]
        assert card["config"]["lr"] == pytest.approx(0.1 * generalist["config"]["lr"])


def card_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.tf
@pytest.mark.slow
def test_demo_fits_on_the_held_out_fold_of_the_runs(demo):
    from mura_ens.training.data import load_training_data

    out, _ = demo
    data = _card(out, "custom_cnn")["data"]
    folds = load_training_data(out / "data" / "MURA-v1.1", val_fraction=data["val_fraction"], seed=data["split_seed"])
    expected = folds.frame.loc[folds.frame["fold"] == "val"]
    fold = pd.read_csv(out / "data" / "val_fold.csv")
    assert sorted(fold["path"]) == sorted(expected["path"]) and set(fold["split"]) == {"train"}
    for run in (p for p in (out / "runs").iterdir() if p.name.startswith("specialists-")):
        counts = _card(out, run.name)["data"]["folds"]["val"]
        part = run.name.rsplit("-", 1)[-1]
        assert counts["studies"] == fold.loc[fold["body_part"] == part, "study"].nunique()

    ensemble = json.loads((out / "heldout" / "ensemble.json").read_text())
    scored = pd.read_csv(out / "heldout" / "scored" / "studies.csv")
    assert set(ensemble["fitting"]["studies"]) <= set(fold["study"]) and set(scored["study"]) == set(fold["study"])
    assert {m["name"] for m in ensemble["members"]} == {p.name for p in (out / "runs").iterdir()}
    valid = pd.read_csv(out / "results" / "studies.csv")
    assert not set(valid["study"]) & set(ensemble["fitting"]["studies"])  # the fit never saw the valid split


@pytest.mark.tf
@pytest.mark.slow
def test_demo_scores_valid_split_plain_and_fitted(demo):
    out, proc = demo
    for folder, ensemble in (("results_body_part", "body_part"), ("results", "fitted")):
        results = out / folder
        for name in ("images.csv", "studies.csv", "metrics.json", "report.html"):
            assert (results / name).is_file(), name
        studies = pd.read_csv(results / "studies.csv")
        assert len([c for c in studies.columns if c.startswith("prob__")]) == 8
        scored = studies[studies["status"] == "ok"]
        metrics = json.loads((results / "metrics.json").read_text())
        assert metrics["ensemble"] == ensemble
        overall = metrics["study"]["overall"]
        assert overall["n"] == len(scored)
        pred = scored["pred"].astype(int)  # the fitted ensemble's per-part thresholds are behind its pred
        if ensemble == "body_part":
            assert (pred == (scored["prob"] > metrics["threshold"]).astype(int)).all()
        assert overall["kappa"] == pytest.approx(cohen_kappa_score(scored["label"], pred), abs=1e-9)
        assert overall["auc"] == pytest.approx(roc_auc_score(scored["label"], scored["prob"]), abs=1e-9)
        assert overall["accuracy"] == pytest.approx(accuracy_score(scored["label"], pred), abs=1e-9)
        # Only the valid split is scored; the planted truncated PNG there is listed, not fatal.
        images = pd.read_csv(results / "images.csv")
        assert images["path"].str.contains("/valid/").all()
        assert "truncated" in set(images["status"])

    fitted = json.loads((out / "results" / "metrics.json").read_text())
    plain = json.loads((out / "results_body_part" / "metrics.json").read_text())
    assert fitted["baselines"]["body_part"]["study"]["overall"]["kappa"] == plain["study"]["overall"]["kappa"]
    text = proc.stdout
    assert "Valid split (never seen by training or the fit): study-level kappa / AUC" in text
    assert "Ensemble fitted on the runs' held-out validation fold" in text
    assert f"plain mean {plain['study']['overall']['kappa']:.3f}" in text
    assert f"fitted ensemble overall study kappa {fitted['study']['overall']['kappa']:.3f}" in text
    assert "report.html" in text


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run(
        [MURA_ENS, "demo", "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not made by 'mura-ens demo'" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _comparison(fitted: float, plain: float, generalist: float) -> Comparison:
    row = {
        "custom_cnn": Cell(generalist, 0.9, 10),
        "specialist": Cell(0.1, 0.6, 10),
        "plain mean": Cell(plain, 0.9, 10),
        "fitted": Cell(fitted, 0.9, 10),
    }
    return Comparison(columns=tuple(row), rows={"overall": row}, generalists=("custom_cnn",))


@pytest.mark.parametrize(
    "fitted, plain, generalist, holds",
    [(0.90, 0.88, 0.905, True), (0.89, 0.88, 0.905, False), (0.90, 0.91, 0.90, False), (0.95, 0.9, 0.9, True)],
)
def test_verdict_is_the_issues_done_when(fitted, plain, generalist, holds):
    verdict = _comparison(fitted, plain, generalist).verdict()
    assert verdict["holds"] is holds
    assert (verdict["best_single"], verdict["best_single_kappa"]) == ("custom_cnn", generalist)


@pytest.mark.tf
@pytest.mark.slow
def test_demo_explains_every_labelled_abnormal_study_and_scores_localisation(demo):
    """`--explain all --findings`: a raw map for every scored image of every labelled abnormal valid study, and
    the pointing game (ensemble and per model, with its random baseline) printed and in the report."""
    import numpy as np

    out, proc = demo
    results = out / "results"
    images = pd.read_csv(results / "images.csv")
    studies = pd.read_csv(results / "studies.csv")
    abnormal = set(studies.loc[(studies["label"] == 1) & (studies["status"] == "ok"), "study"])
    wanted = images.loc[images["study"].isin(abnormal) & (images["status"] == "ok"), "path"]
    index = pd.read_csv(results / "heatmaps" / "index.csv", keep_default_na=False).set_index("image")
    for path in wanted:
        raw = np.load(results / index.at[path, "npy"])
        assert raw.dtype == np.float32 and raw.ndim == 2, path
    evaluation = json.loads((results / "heatmaps" / "explain_eval.json").read_text())
    ensemble = evaluation["sources"]["ensemble"]
    assert ensemble["images"] > 0 and 0 < ensemble["pointing_baseline"]["mean"] < 1
    assert f"heatmaps ensemble: pointing game {ensemble['pointing_game']['mean']:.3f}" in proc.stdout
    assert "heatmaps custom_cnn: pointing game" in proc.stdout
    assert "Localisation against ground-truth findings" in (results / "report.html").read_text(encoding="utf-8")
