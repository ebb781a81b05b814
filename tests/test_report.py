"""report.html: self-contained, complete, robust to missing labels, one class and one model."""

from __future__ import annotations

import base64
import re
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from mura_ens.constants import BODY_PARTS
from mura_ens.metrics import evaluate_predictions, study_probabilities
from mura_ens.report import write_report

pytestmark = pytest.mark.filterwarnings("ignore::mura_ens.metrics.UndefinedMetricWarning")

VOID = {"meta", "img", "br", "hr", "link", "input", "col"}


class _TagChecker(HTMLParser):
    """Collects tags, unclosed/mismatched elements and every src/href."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def _parse(text: str) -> _TagChecker:
    checker = _TagChecker()
    checker.feed(text)
    checker.close()
    return checker


def _run(models: list[str], *, labels: bool = True, one_class_part: str | None = "XR_HUMERUS", specialist=None):
    """Scoring-like tables for ``models``; ``specialist`` = (model, part) scores one part only."""
    rng = np.random.default_rng(0)
    rows = []
    for part in BODY_PARTS:
        for s in range(20):
            label = 1 if part == one_class_part else int(rng.random() < 0.4)
            study = f"valid/{part}/patient{s:05d}/study1"
            for i in range(int(rng.integers(1, 3))):
                row = {
                    "path": f"/data/{study}/image{i + 1}.png",
                    "study": study,
                    "patient": f"patient{s:05d}",
                    "body_part": part,
                    "label": label if labels else pd.NA,
                    "status": "ok",
                    "error": "",
                }
                for m in models:
                    row[f"prob__{m}"] = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1))
                rows.append(row)
    images = pd.DataFrame(rows)
    images["label"] = images["label"].astype("Int64")
    if specialist:
        name, part = specialist
        images.loc[images["body_part"] != part, f"prob__{name}"] = np.nan
    images.loc[3, "status"] = "truncated"
    images.loc[3, "error"] = "image file is truncated <b>bad</b>"
    images.loc[3, [f"prob__{m}" for m in models]] = np.nan
    images["prob"] = images[[f"prob__{m}" for m in models]].mean(axis=1)
    prob_cols = [f"prob__{m}" for m in models] + ["prob"]
    studies = study_probabilities(images, prob_cols=prob_cols)
    studies["pred"] = (studies["prob"] > 0.5).astype(int)
    studies["status"] = "ok"
    failed = images.loc[images["status"] != "ok", ["path", "study", "status", "error"]]
    metrics = None
    if labels:
        metrics = evaluate_predictions(images, n_bootstrap=100)
        metrics["models"] = {m: evaluate_predictions(images, prob_col=f"prob__{m}", n_bootstrap=100) for m in models}
    model_info = [
        {
            "name": m,
            "path": f"runs/{m}/model.onnx",
            "sha256": f"{i:02d}" + "ab" * 31,
            "metadata": {
                "plugin": m.split("-")[0],
                "model_name": m,
                "body_parts": "",
                "input_size": "64",
                "threshold": "0.5",
                "mura_ens_version": "0.1.0",
            },
            "card": {
                "plugin": m,
                "onnx_max_abs_diff": 2.5e-7,
                "config": {"lr": 0.001, "epochs": 2},
                "metrics": {"test": {"study": {"kappa": 0.61}}},
            }
            if i == 0
            else None,
        }
        for i, m in enumerate(models)
    ]
    provenance = {"command": ["mura-ens", "score", "/data/valid"], "input": "/data/valid", "ensemble": "body_part"}
    return dict(
        studies=studies, images=images, metrics=metrics, models=model_info, provenance=provenance, failed=failed
    )


def test_report_is_self_contained_and_complete(tmp_path):
    models = ["custom_cnn-a", "densenet201-b", "resnet50-c"]
    run = _run(models)
    start = time.perf_counter()
    path = write_report(tmp_path / "out" / "report.html", **run)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, elapsed  # typically ~1.5 s for 7 parts x 3 models
    assert path == tmp_path / "out" / "report.html"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # atomic: no temp left
    text = path.read_text(encoding="utf-8")

    checker = _parse(text)
    assert checker.errors == [] and checker.stack == []
    assert all(u.startswith("data:image/png;base64,") for u in checker.urls), checker.urls
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(pngs) == 1 and base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"

    for name in models:
        assert f"{name} — study level" in text and f"{name} — image level" in text
    assert "ensemble — study level" in text
    for part in BODY_PARTS:
        assert part in text
    # one-class part: AUC shown as n/a, not a crash
    metric_tables = re.findall(r"<table><caption>[^<]* — (?:study|image) level</caption>(.*?)</table>", text)
    humerus_rows = [row for t in metric_tables for row in re.findall(r"<tr><td>XR_HUMERUS</td>(.*?)</tr>", t)]
    assert len(humerus_rows) == 2 * (1 + len(models))  # study + image level, ensemble + models
    assert all(re.findall(r'<td class="num">([^<]*)</td>', r)[3] == "n/a" for r in humerus_rows)  # AUC column
    # metrics table shows the values of metrics.json
    overall = run["metrics"]["study"]["overall"]
    lo, hi = overall["auc_ci"]
    assert f"{overall['auc']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    # confusion matrix counts = ensemble predictions at study level
    st = run["studies"].dropna(subset=["prob"])
    tp = int(((st["label"] == 1) & (st["prob"] > 0.5)).sum())
    assert f'<td class="hit">{tp:,}</td>' in text
    # failed input listed, its error escaped
    assert "/data/valid/XR_ELBOW/patient00001/study1/image" in text or run["failed"]["path"].iloc[0] in text
    assert "truncated" in text and "&lt;b&gt;bad&lt;/b&gt;" in text and "<b>bad</b>" not in text
    # provenance: card excerpt, metadata, command, library versions
    assert "onnx_max_abs_diff" in text and "No card.json beside this model" in text
    assert "mura-ens score /data/valid" in text and "scikit-learn" in text
    assert "01abababababab" in text[: text.index("Report built with")]  # model hash, short form

    # deterministic: the same run gives the same bytes (resume relies on it)
    again = write_report(tmp_path / "again.html", **run).read_text(encoding="utf-8")
    assert again == text


def test_report_without_labels_shows_predictions_only(tmp_path):
    run = _run(["m1", "m2"], labels=False)
    text = write_report(tmp_path / "report.html", **run).read_text()
    assert _parse(text).errors == []
    assert "No labels in the input" in text
    assert "data:image/png;base64" not in text and "Confusion matrix" not in text
    assert "predicted abnormal" in text and "labelled abnormal" not in text
    n_abnormal = int((run["studies"]["prob"] > 0.5).sum())
    assert re.search(rf'<tr class="overall"><td>overall</td>.*?{n_abnormal} \(', text)


def test_report_with_one_model_and_a_specialist_curve(tmp_path):
    run = _run(["solo"], one_class_part=None)
    text = write_report(tmp_path / "r.html", **run).read_text()
    assert "solo — study level" in text and "data:image/png;base64" in text

    run = _run(["general", "hand_only"], one_class_part=None, specialist=("hand_only", "XR_HAND"))
    text = write_report(tmp_path / "r2.html", **run).read_text()
    assert "hand_only — study level" in text
    assert _parse(text).errors == []


def test_report_accepts_missing_optional_tables(tmp_path):
    run = _run(["m1"])
    text = write_report(
        tmp_path / "r.html",
        studies=run["studies"],
        images=None,
        metrics=run["metrics"],
        models=[],
        provenance=None,
        failed=None,
    ).read_text()
    assert "every input was scored" in text and "m1 — study level" in text
