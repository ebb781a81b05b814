"""report.html: self-contained, complete, robust to missing labels, one class and one model."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from mura_ens.constants import BODY_PARTS
from mura_ens.metrics import BootstrapSettings, evaluate_predictions, study_probabilities
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
        metrics = evaluate_predictions(images, bootstrap=BootstrapSettings(n_resamples=100))
        metrics["models"] = {
            m: evaluate_predictions(images, prob_col=f"prob__{m}", bootstrap=BootstrapSettings(n_resamples=100))
            for m in models
        }
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
    path = write_report(tmp_path / "out" / "report.html", **run)  # its speed: benchmarks/metrics_report.py
    assert path == tmp_path / "out" / "report.html"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # atomic: no temp left
    text = path.read_text(encoding="utf-8")

    checker = _parse(text)
    assert checker.errors == [] and checker.stack == []
    assert all(u.startswith("data:image/png;base64,") for u in checker.urls), checker.urls
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    # one forest plot per body part and overall, the ROC and the reliability figures
    assert len(pngs) == 1 + len(BODY_PARTS) + 2
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs)

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
    # confusion matrix counts = ensemble predictions at study level, overall and per body part
    st = run["studies"].dropna(subset=["prob"])
    y, pred = st["label"].astype(int), (st["prob"] > 0.5).astype(int)
    tn, fp, fn, tp = (int(((y == a) & (pred == b)).sum()) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)))
    assert f'<tr><th>normal</th><td class="hit">{tn:,}</td><td>{fp:,}</td>' in text
    assert f'<tr><th>abnormal</th><td>{fn:,}</td><td class="hit">{tp:,}</td>' in text
    wrist = st["body_part"] == "XR_WRIST"
    counts = [int(((y == a) & (pred == b) & wrist).sum()) for a, b in ((1, 1), (0, 1), (1, 0), (0, 0))]
    cells = "".join(f'<td class="num">{c}</td>' for c in [*counts, int(wrist.sum())])
    assert f"<tr><td>XR_WRIST</td>{cells}</tr>" in text
    # failed input listed, its error escaped
    assert f'<td class="path">{run["failed"]["path"].iloc[0]}</td>' in text
    assert "truncated" in text and "&lt;b&gt;bad&lt;/b&gt;" in text and "<b>bad</b>" not in text
    # provenance: one compact table (no card.json content: it names training images by path), command, versions
    assert "onnx_max_abs_diff" not in text and "card.json: <code>" not in text
    assert "<td>model.onnx</td>" in text and "<th>training set sha256</th>" in text
    assert "mura-ens score /data/valid" in text and "scikit-learn" in text
    assert "<td>01ababababab</td>" in text[: text.index("Report built with")]  # model hash, short form

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


def test_report_reads_the_metrics_it_is_given(tmp_path, monkeypatch):
    from mura_ens import report

    run = _run(["m1"], one_class_part=None)
    overall = run["metrics"]["study"]["overall"]
    # metrics that disagree with the rows: the report must show these, not recompute its own
    overall.update(n=10, n_positive=4, sensitivity=0.5, specificity=0.5, auc=0.123)
    run["metrics"]["models"]["m1"]["study"]["by_body_part"]["XR_HAND"]["auc"] = 0.456
    legends = []
    real_line = report._roc_line
    monkeypatch.setattr(
        report,
        "_roc_line",
        lambda ax, y, p, *, label, colour: legends.append(label) or real_line(ax, y, p, label=label, colour=colour),
    )
    text = write_report(tmp_path / "r.html", **run).read_text()
    assert "ensemble, all body parts (n = 10)" in text
    assert '<tr><th>normal</th><td class="hit">3</td><td>3</td>' in text
    assert '<tr><th>abnormal</th><td>2</td><td class="hit">2</td>' in text
    assert "ensemble (0.123)" in legends and "m1 (0.456)" in legends


def test_report_without_metrics_shows_no_confusion_matrix(tmp_path):
    run = _run(["m1"])
    text = write_report(tmp_path / "r.html", **{**run, "metrics": None}).read_text()
    assert "No labels in the input" in text and "Confusion matrix" not in text


def test_forest_plots_show_every_model_and_the_ensemble_with_intervals_from_metrics(tmp_path, monkeypatch):
    from mura_ens import report

    run = _run(["general", "hand_only"], one_class_part=None, specialist=("hand_only", "XR_HAND"))
    run["metrics"]["baselines"] = {"body_part": {"study": run["metrics"]["models"]["general"]["study"]}}
    drawn = {}
    monkeypatch.setattr(report, "_forest_png", lambda panel, rows, xmin, n: drawn.setdefault(panel, rows) and "")
    text = write_report(tmp_path / "r.html", **run).read_text()
    assert "Study kappa per body part" in text and "plain-mean baseline (grey)" in text
    assert set(drawn) == {"overall", *BODY_PARTS}
    metrics = run["metrics"]
    for panel, rows in drawn.items():
        labels = [label for label, _, _ in rows]
        level = "overall" if panel == "overall" else None

        def group(study, panel=panel, level=level):
            return study[level] if level else study["by_body_part"][panel]

        assert rows[0][1] is group(metrics["study"])  # the very dicts of metrics: nothing recomputed
        assert rows[1][0] == "body_part mean (baseline)"
        assert rows[2] == ("general", group(metrics["models"]["general"]["study"]), "C0")
        # the specialist: in its own part only (its overall number would describe XR_HAND alone)
        assert ("hand_only" in labels) == (panel == "XR_HAND"), panel


def test_fitted_ensemble_section_shows_weights_thresholds_and_the_file(tmp_path):
    run = _run(["m1", "m2"])
    fitted = {
        "members": [{"name": "m1", "sha256": "a" * 64}, {"name": "m2", "sha256": "b" * 64}],
        "global": {"calibrator": {"method": "platt", "a": 1.5, "b": 0.1}, "threshold": 0.45},
        "parts": {
            "XR_HAND": {
                "status": "fitted",
                "n_studies": 20,
                "n_positive": 8,
                "weights": {"m1": 0.75, "m2": 0.25},
                "calibrator": {"method": "none"},
                "threshold": 0.4,
                "quality": {"plain": {"kappa": 0.5, "log_loss": 0.61}, "used_cv": {"kappa": 0.6, "log_loss": 0.55}},
                "notes": ["weights 0.67 fitted + 0.33 plain mean <n/(n+10)>"],
            }
        },
        "settings": {"calibrate": "none", "threshold_rule": "kappa"},
        "fitting": {"n_studies": 20, "sha256": "c" * 64, "studies": [f"s{i}" for i in range(20)]},
        "notes": [],
    }
    run["provenance"] = {
        **run["provenance"],
        "ensemble": "fitted",
        "ensemble_file": "/e.json",
        "fitted_ensemble": fitted,
    }
    run["metrics"]["ensemble"] = "fitted"
    run["metrics"]["ensemble_thresholds"] = {"by_body_part": {"XR_HAND": 0.4}, "default": 0.45}
    text = write_report(tmp_path / "r.html", **run).read_text()
    assert _parse(text).errors == []
    assert '<h2 id="fitted">Fitted ensemble</h2>' in text
    row = re.search(r"<tr><td>XR_HAND</td>(.*?)</tr>", text[text.index('id="fitted"') :]).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells == [
        "fitted",
        "20 (8)",
        "m1 0.750; m2 0.250",
        "none",
        "0.400",
        "0.500 → 0.600",
        "0.610 → 0.550",
    ]
    assert "Platt a=1.5 b=0.1" in text and "0.450" in text  # the global row
    assert "<summary>Fitting notes (1)</summary>" in text and "&lt;n/(n+10)&gt;" in text
    assert "<summary>ensemble.json</summary>" in text and "[20 study keys]" in text
    assert "fitted ensemble — study level" in text and "per-part thresholds" in text
    assert "<th>fitted_ensemble</th>" not in text  # shown as its section, not dumped in the provenance table
    assert "Fitted ensemble" in text[: text.index('id="metrics"')]


def test_provenance_is_one_compact_table_without_card_content_or_absolute_paths(tmp_path):
    """Issue 23: a model card lists training images by path; the report keeps names and sha256 only."""
    run = _run(["m1"])
    run["models"][0]["card"]["data"] = {"parity_paths": ["/train/XR_HAND/patient00042/study1/image1.png"]}
    run["models"][0]["path"] = "/home/someone/runs/m1/model.onnx"
    run["models"][0]["training_set_sha256"] = "cd" * 32
    text = write_report(tmp_path / "r.html", **run).read_text()
    assert "patient00042" not in text and "/home/someone" not in text and "parity_paths" not in text
    (row,) = re.findall(r"<tr><td>m1</td>.*?</tr>", text)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row)[1:2] == ["model.onnx"] and "cdcdcdcdcdcd" in row
    assert "<details" not in text[text.index('id="provenance"') :]


def test_reliability_points_and_brier_score():
    from mura_ens.report import reliability_points

    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.5, 0.55, 1.0, 0.9])
    xs, ys, brier = reliability_points(y, p)
    assert xs == pytest.approx([0.1, 0.525, 0.95]) and ys == [0.0, 1.0, 0.5]
    assert brier == pytest.approx(np.mean((p - y) ** 2))


def test_short_label_keeps_the_start_and_the_end_of_a_long_run_name():
    from mura_ens.report import short_label

    name = "specialists-custom_cnn-64-f16-c5-e10-pat5-vf0.3-init-wc-aug-XR_ELBOW"
    short = short_label(name)
    assert len(short) == 36 and short.startswith("specialists-custo") and short.endswith("wc-aug-XR_ELBOW")
    assert "…" in short
    assert short_label("custom_cnn") == "custom_cnn"


def test_a_handful_of_one_class_studies_gets_notes_not_empty_figures(tmp_path):
    """One abnormal study (a PACS hook's job): no kappa, no ROC curve, too few studies for calibration -- each
    section says why in one sentence and no matplotlib figure is drawn (they were ~1 s of an empty page)."""
    run = _run(["solo"], one_class_part=None)
    images = run["images"]
    one = images[images["study"] == images.loc[images["label"] == 1, "study"].iloc[0]].copy()
    studies = study_probabilities(one, prob_cols=["prob__solo", "prob"])
    studies["pred"], studies["status"] = (studies["prob"] > 0.5).astype(int), "ok"
    metrics = evaluate_predictions(one, bootstrap=BootstrapSettings(n_resamples=20))
    metrics["models"] = {
        "solo": evaluate_predictions(one, prob_col="prob__solo", bootstrap=BootstrapSettings(n_resamples=20))
    }
    text = write_report(
        tmp_path / "r.html", studies=studies, images=one, metrics=metrics, models=run["models"][:1]
    ).read_text()
    assert _parse(text).errors == [] and "data:image/png;base64" not in text
    assert "No study kappa to plot: kappa needs both classes" in text
    assert "No ROC curve: every labelled study is abnormal, and a curve needs both classes." in text
    assert "Too few labelled studies (1) for a reliability diagram: it needs 10 or more." in text
    assert "solo — study level" in text and "Confusion matrix" in text


def test_a_part_whose_kappa_is_undefined_on_every_line_is_named_not_drawn(tmp_path):
    run = _run(["solo"], one_class_part=None)
    metrics = run["metrics"]
    for level in (metrics["study"], metrics["models"]["solo"]["study"]):
        level["by_body_part"]["XR_HAND"].update(kappa=None, kappa_ci=[None, None])
    text = write_report(tmp_path / "r.html", **run).read_text()
    assert len(re.findall(r'alt="study kappa, ([A-Z_a-z]+)"', text)) == len(BODY_PARTS)  # overall + 6 parts
    assert 'alt="study kappa, XR_HAND"' not in text
    assert "Not plotted, kappa undefined for every line (one class): XR_HAND." in text
