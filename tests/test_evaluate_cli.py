"""`mura-ens evaluate` end to end on generated studies.csv / images.csv files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mura_ens.cli.evaluate import evaluate_file
from mura_ens.cli.main import main
from mura_ens.constants import BODY_PARTS
from mura_ens.errors import UsageError
from mura_ens.metrics import NO_BOOTSTRAP, BootstrapSettings

REPO = Path(__file__).resolve().parents[1]

# XR_HUMERUS is one-class on purpose; the CLI test checks that its warning reaches stderr.
pytestmark = pytest.mark.filterwarnings("ignore::mura_ens.metrics.UndefinedMetricWarning")


def _images(seed: int = 0, studies_per_part: int = 25) -> pd.DataFrame:
    """An images.csv as scoring writes it: a few failed images, one one-class body part."""
    rng = np.random.default_rng(seed)
    rows = []
    for part in BODY_PARTS:
        for s in range(studies_per_part):
            label = 1 if part == "XR_HUMERUS" else int(rng.random() < 0.4)
            study = f"valid/{part}/patient{s:05d}/study1"
            for i in range(int(rng.integers(1, 4))):
                rows.append(
                    {
                        "path": f"/data/{study}/image{i + 1}.png",
                        "study": study,
                        "patient": f"patient{s:05d}",
                        "body_part": part,
                        "label": label,
                        "prob": round(float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1)), 3),
                        "status": "ok",
                        "error": "",
                    }
                )
    frame = pd.DataFrame(rows)
    for row in (2, 40):
        frame.loc[row, ["prob", "status", "error"]] = [np.nan, "truncated", "image file is truncated"]
    return frame


def _expected(rows: pd.DataFrame) -> dict[str, float]:
    y = rows["label"].astype(int).to_numpy()
    p = rows["prob"].to_numpy(dtype=float)
    pred = (p > 0.5).astype(int)
    return {
        "kappa": cohen_kappa_score(y, pred),
        "auc": roc_auc_score(y, p),
        "accuracy": accuracy_score(y, pred),
    }


def _assert_level_matches(level: dict, rows: pd.DataFrame) -> None:
    groups = [("overall", rows)] + [(part, g) for part, g in rows.groupby("body_part")]
    assert sorted(level["by_body_part"]) == sorted(p for p, _ in groups[1:])
    for part, g in groups:
        got = level["overall"] if part == "overall" else level["by_body_part"][part]
        assert got["n"] == len(g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = _expected(g) if g["label"].nunique() > 1 else {"accuracy": _expected(g)["accuracy"]}
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-9, (part, key, got[key], value)
        if g["label"].nunique() == 1:
            assert got["auc"] is None and got["auc_ci"] == [None, None]


def test_evaluate_images_csv_end_to_end(tmp_path, capsys):
    images = _images()
    csv = tmp_path / "images.csv"
    images.to_csv(csv, index=False)
    out = tmp_path / "out" / "metrics.json"

    assert main(["evaluate", str(csv), "--out", str(out), "--bootstrap", "200", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "Study-level metrics" in captured.out and "Image-level metrics" in captured.out
    assert "XR_HUMERUS" in captured.err and "ROC AUC is undefined" in captured.err

    metrics = json.loads(out.read_text())
    assert metrics["threshold"] == 0.5 and metrics["bootstrap"]["n_resamples"] == 200
    ok = images[images["status"] == "ok"]
    _assert_level_matches(metrics["image"], ok)
    studies = ok.groupby("study").agg(body_part=("body_part", "first"), label=("label", "first"), prob=("prob", "mean"))
    _assert_level_matches(metrics["study"], studies.reset_index())
    assert metrics["image"]["overall"]["n_excluded"] == 2
    assert metrics["study"]["by_body_part"]["XR_HUMERUS"]["auc"] is None

    # same seed -> same file; atomic write leaves no temp files behind
    first = out.read_text()
    assert main(["evaluate", str(csv), "--out", str(out), "--bootstrap", "200", "--seed", "3"]) == 0
    assert out.read_text() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]


def test_evaluate_studies_csv_with_failed_studies_and_other_prob_column(tmp_path):
    images = _images(seed=1)
    studies = (
        images[images["status"] == "ok"]
        .groupby("study", sort=False)
        .agg(
            patient=("patient", "first"),
            body_part=("body_part", "first"),
            n_images=("path", "size"),
            label=("label", "first"),
            prob=("prob", "mean"),
        )
        .reset_index()
    )
    studies["prob__m1"] = studies["prob"].round(1)  # ties
    studies.loc[[0, 9], ["prob", "prob__m1"]] = np.nan  # failed studies: empty probabilities
    csv = tmp_path / "studies.csv"
    studies.to_csv(csv, index=False)

    metrics = evaluate_file(csv, prob_column="prob__m1", bootstrap=BootstrapSettings(n_resamples=100, seed=0))
    assert "image" not in metrics
    scored = studies.dropna(subset=["prob__m1"]).assign(prob=lambda f: f["prob__m1"])
    _assert_level_matches(metrics["study"], scored)
    assert metrics["study"]["overall"]["n_excluded"] == 2


def test_threshold_option_changes_predictions(tmp_path):
    csv = tmp_path / "images.csv"
    _images(seed=2).to_csv(csv, index=False)
    low = evaluate_file(csv, threshold=0.3, bootstrap=NO_BOOTSTRAP)
    high = evaluate_file(csv, threshold=0.7, bootstrap=NO_BOOTSTRAP)
    assert low["threshold"] == 0.3
    assert low["study"]["overall"]["sensitivity"] > high["study"]["overall"]["sensitivity"]
    assert low["study"]["overall"]["auc"] == high["study"]["overall"]["auc"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_missing_file_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert main(["evaluate", str(missing), "--out", str(tmp_path / "m.json")]) == 2
    line = _one_error_line(capsys)
    assert "not found" in line and "nope.csv" in line
    assert not (tmp_path / "m.json").exists()


def test_missing_columns_exit_2_naming_them(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    _images().drop(columns=["label"]).to_csv(csv, index=False)
    assert main(["evaluate", str(csv), "--out", str(tmp_path / "m.json")]) == 2
    assert "label" in _one_error_line(capsys)
    assert main(["evaluate", str(csv), "--prob-column", "prob__nope", "--out", str(tmp_path / "m.json")]) == 2
    line = _one_error_line(capsys)
    assert "prob__nope" in line and "label" in line


def test_empty_file_is_a_usage_error(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("")
    with pytest.raises(UsageError, match="empty.csv"):
        evaluate_file(csv)


def test_console_script_runs_and_command_module_imports_light(tmp_path):
    csv = tmp_path / "images.csv"
    _images(studies_per_part=6).to_csv(csv, index=False)
    script = Path(sys.executable).with_name("mura-ens")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mura_ens.cli.main"]
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        [*command, "evaluate", str(csv), "--out", str(tmp_path / "m.json"), "--bootstrap", "50"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "overall" in done.stdout and json.loads((tmp_path / "m.json").read_text())["study"]["overall"]["n"] > 0

    probe = "import sys, mura_ens.cli.evaluate; print(sorted({'numpy','pandas','sklearn','onnxruntime','tensorflow'} & set(sys.modules)))"
    light = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert light.returncode == 0, light.stderr
    assert light.stdout.strip() == "[]"
