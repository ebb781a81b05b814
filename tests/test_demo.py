"""`mura-ens demo --quick`: the README's main job, end to end (TensorFlow for training, ORT for scoring)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

pytestmark = [pytest.mark.tf, pytest.mark.slow]

MURA_ENS = str(Path(sys.executable).with_name("mura-ens"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    proc = subprocess.run([MURA_ENS, "demo", "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_trains_generalist_and_one_specialist_per_part(demo):
    out, _ = demo
    runs = sorted(p.name for p in (out / "runs").iterdir() if (p / "model.onnx").is_file())
    assert "custom_cnn" in runs
    parts = {"XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST"}
    assert {r.rsplit("-", 1)[-1] for r in runs if r.startswith("specialists-")} == parts
    for run in runs:
        card = json.loads((out / "runs" / run / "card.json").read_text())
        assert card["onnx_max_abs_diff"] <= 1e-4


def test_demo_scores_valid_split_with_body_part_ensemble(demo):
    out, proc = demo
    results = out / "results"
    for name in ("images.csv", "studies.csv", "metrics.json", "report.html"):
        assert (results / name).is_file(), name
    studies = pd.read_csv(results / "studies.csv")
    assert {c for c in studies.columns if c.startswith("prob__")} >= {"prob__custom_cnn"}
    assert len([c for c in studies.columns if c.startswith("prob__")]) == 8
    scored = studies[studies["status"] == "ok"]
    metrics = json.loads((results / "metrics.json").read_text())
    overall = metrics["study"]["overall"]
    assert overall["n"] == len(scored)
    pred = (scored["prob"] > metrics["threshold"]).astype(int)
    assert overall["kappa"] == pytest.approx(cohen_kappa_score(scored["label"], pred), abs=1e-9)
    assert overall["auc"] == pytest.approx(roc_auc_score(scored["label"], scored["prob"]), abs=1e-9)
    assert overall["accuracy"] == pytest.approx(accuracy_score(scored["label"], pred), abs=1e-9)
    # Only the valid split is scored; the planted truncated PNG there is listed, not fatal.
    images = pd.read_csv(results / "images.csv")
    assert images["path"].str.contains("/valid/").all()
    assert "truncated" in set(images["status"])
    assert "report.html" in proc.stdout and "Study-level metrics, ensemble (body_part)" in proc.stdout


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run(
        [MURA_ENS, "demo", "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not made by 'mura-ens demo'" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
