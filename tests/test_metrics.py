"""mura_ens.metrics: equality with scikit-learn, bootstrap, aggregation, grouping."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score, roc_auc_score

from mura_ens import metrics as M
from mura_ens.errors import UsageError
from mura_ens.metrics import (
    NO_BOOTSTRAP,
    BootstrapSettings,
    EnsembleInfo,
    ModelColumn,
    PartThresholds,
    UndefinedMetricWarning,
    binary_metrics,
    bootstrap_intervals,
    build_metrics,
    confusion_counts,
    evaluate_predictions,
    fold_undefined_warnings,
    format_metric,
    format_metrics_table,
    grouped_metrics,
    resampled_auc,
    resampled_kappa,
    study_probabilities,
)


def _random_rows(seed: int, n: int = 400, *, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    p = np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0, 1)
    if ties:  # coarse scores: many ties, some exactly at the threshold
        p = np.round(p, 1)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("ties", [True, False])
def test_binary_metrics_equal_sklearn(seed, ties):
    y, p = _random_rows(seed, ties=ties)
    threshold = 0.5
    m = binary_metrics(y, p, threshold=threshold, bootstrap=BootstrapSettings(n_resamples=50, seed=seed))
    pred = (p > threshold).astype(int)
    assert m["n"] == len(y) and m["n_positive"] == int(y.sum())
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-9)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred), abs=1e-12)
    assert set(M.GROUP_KEYS) <= set(m)
    assert all(type(m[k]) is float for k in ("kappa", "auc", "accuracy", "sensitivity", "specificity"))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_vectorised_metrics_of_identity_resample_equal_sklearn(seed, ties):
    y, p = _random_rows(seed, n=257, ties=ties)
    pred = (p > 0.5).astype(int)
    identity = np.arange(len(y))[None, :]
    assert resampled_auc(y, p, identity)[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert resampled_kappa(y, pred, identity)[0] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)


def test_vectorised_metrics_equal_sklearn_on_every_resample():
    y, p = _random_rows(7, n=60, ties=True)
    pred = (p > 0.5).astype(int)
    indices = np.random.default_rng(1).integers(0, len(y), size=(40, len(y)))
    aucs = resampled_auc(y, p, indices)
    kappas = resampled_kappa(y, pred, indices)
    for b, idx in enumerate(indices):
        assert aucs[b] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = cohen_kappa_score(y[idx], pred[idx])
        assert kappas[b] == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_vectorised_metrics_mark_undefined_resamples_nan():
    y = np.array([0, 1, 1])
    p = np.array([0.2, 0.9, 0.8])
    indices = np.array([[1, 2, 1], [0, 1, 2], [0, 0, 0]])
    auc = resampled_auc(y, p, indices)
    assert np.isnan(auc[0]) and auc[1] == 1.0 and np.isnan(auc[2])
    kappa = resampled_kappa(y, (p > 0.5).astype(int), indices)
    # resample 0: all labels and predictions 1 -> undefined, as in sklearn
    assert np.isnan(kappa[0]) and kappa[1] == 1.0 and np.isnan(kappa[2])


def test_bootstrap_is_deterministic_per_seed_and_varies_with_it():
    y, p = _random_rows(3, n=300, ties=False)
    a = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=200, seed=11))
    b = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=200, seed=11))
    c = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=200, seed=12))
    assert a == b
    assert a != c


def test_bootstrap_does_not_depend_on_memory_chunking(monkeypatch):
    y, p = _random_rows(5, n=120)
    whole = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=100, seed=4))
    monkeypatch.setattr(M, "_BOOTSTRAP_CELLS", 7 * 120)  # 7 resamples per chunk
    assert bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=100, seed=4)) == whole


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intervals_bracket_point_estimates(seed):
    y, p = _random_rows(seed, n=500, ties=False)
    m = binary_metrics(y, p, bootstrap=BootstrapSettings(n_resamples=500, seed=seed))
    for key in ("kappa", "auc"):
        lo, hi = m[f"{key}_ci"]
        assert lo < m[key] < hi
        assert hi - lo < 0.25  # n=500: intervals are informative, not [0, 1]


def test_interval_width_follows_confidence_level():
    y, p = _random_rows(0, n=300, ties=False)
    wide = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=400, ci=0.99, seed=0))["auc_ci"]
    narrow = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=400, ci=0.80, seed=0))["auc_ci"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_of_3200_rows_brackets_the_estimates():
    # its speed is measured by benchmarks/metrics_report.py
    y, p = _random_rows(0, n=3200, ties=False)
    out = bootstrap_intervals(y, p, bootstrap=BootstrapSettings(n_resamples=1000, seed=0))
    m = binary_metrics(y, p, bootstrap=NO_BOOTSTRAP)
    assert out["auc_ci"][0] < m["auc"] < out["auc_ci"][1]
    assert out["kappa_ci"][0] < m["kappa"] < out["kappa_ci"][1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_resamples": -1}, r"resamples must be an integer >= 0, got -1$"),
        ({"n_resamples": 2.5}, r"resamples must be an integer >= 0, got 2.5$"),
        ({"ci": 1.0}, r"confidence level must be in \[0, 1\), got 1.0$"),
        ({"ci": -0.1}, r"confidence level must be in \[0, 1\), got -0.1$"),
        ({"seed": -3}, r"seed must be an integer >= 0, got -3$"),
    ],
)
def test_bootstrap_settings_refuse_a_bad_value_naming_it(kwargs, message):
    with pytest.raises(UsageError, match=message):
        BootstrapSettings(**kwargs)


def test_bootstrap_settings_are_frozen_and_written_as_in_metrics_json():
    import dataclasses

    settings = BootstrapSettings(n_resamples=np.int64(20), ci=0.9, seed=3)
    assert settings.to_json() == {"n_resamples": 20, "ci": 0.9, "seed": 3}
    assert type(settings.to_json()["n_resamples"]) is int
    assert M.DEFAULT_BOOTSTRAP.to_json() == {"n_resamples": 1000, "ci": 0.95, "seed": 0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 4


def test_prediction_is_strictly_greater_than_threshold():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.5, 0.5, 0.2, 0.9])
    m = binary_metrics(y, p, threshold=0.5, bootstrap=NO_BOOTSTRAP)
    # p == 0.5 is predicted normal: correct for row 0, wrong for row 1
    assert m["accuracy"] == 0.75
    assert m["sensitivity"] == 0.5 and m["specificity"] == 1.0
    assert binary_metrics(y, p, threshold=0.49, bootstrap=NO_BOOTSTRAP)["accuracy"] == 0.75
    assert m["kappa_ci"] == [None, None]  # no resamples: no intervals


def test_one_class_group_warns_and_has_no_auc():
    y = np.ones(20, dtype=int)
    p = np.linspace(0.1, 0.9, 20)
    with pytest.warns(UndefinedMetricWarning, match="XR_HAND"):
        m = binary_metrics(y, p, bootstrap=BootstrapSettings(n_resamples=100), group="XR_HAND")
    assert m["auc"] is None and m["auc_ci"] == [None, None]
    pred = (p > 0.5).astype(int)
    assert m["kappa"] == cohen_kappa_score(y, pred) == 0.0
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["specificity"] is None and m["sensitivity"] == pytest.approx(pred.mean())


def test_undefined_kappa_is_none_not_a_crash():
    y = np.zeros(5, dtype=int)
    with pytest.warns(UndefinedMetricWarning):
        m = binary_metrics(y, np.full(5, 0.1), bootstrap=BootstrapSettings(n_resamples=50))
    assert m["kappa"] is None and m["kappa_ci"] == [None, None]
    assert m["accuracy"] == 1.0 and m["specificity"] == 1.0 and m["sensitivity"] is None


def test_empty_group_is_all_none():
    m = binary_metrics([], [], bootstrap=BootstrapSettings(n_resamples=100))
    assert m["n"] == 0 and m["n_positive"] == 0
    assert all(m[k] is None for k in ("kappa", "auc", "accuracy", "sensitivity", "specificity"))
    assert m["kappa_ci"] == [None, None] == m["auc_ci"]


def test_binary_metrics_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match=r"\[2\]"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="nan"):
        binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="shapes"):
        binary_metrics([0, 1], [0.1])


def _image_frame():
    return pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(7)],
            "study": ["s1", "s1", "s2", "s3", "s3", "s2", "s4"],
            "patient": ["p1", "p1", "p2", "p3", "p3", "p2", "p4"],
            "body_part": ["XR_HAND", "XR_HAND", "XR_WRIST", "XR_HAND", "XR_HAND", "XR_WRIST", ""],
            "label": pd.array([1, 1, 0, pd.NA, 1, 0, 0], dtype="Int64"),
            "prob": [0.2, 0.6, 0.3, np.nan, 0.9, np.nan, np.nan],
        }
    )


def test_study_probabilities_mean_ignores_failed_images():
    studies = study_probabilities(_image_frame())
    assert studies["study"].tolist() == ["s1", "s2", "s3", "s4"]  # order of first appearance
    assert list(studies.columns) == ["study", "patient", "body_part", "n_images", "label", "prob"]
    by = studies.set_index("study")
    assert by.loc["s1", "prob"] == pytest.approx(0.4)
    assert by.loc["s2", "prob"] == pytest.approx(0.3)  # NaN image ignored
    assert by.loc["s3", "prob"] == pytest.approx(0.9)
    assert np.isnan(by.loc["s4", "prob"])  # no valid image
    assert by["n_images"].tolist() == [2, 2, 2, 1]
    assert by.loc["s3", "label"] == 1  # first non-missing label
    assert by.loc["s2", "body_part"] == "XR_WRIST"


def test_study_probabilities_several_columns_and_label_conflict():
    images = _image_frame().assign(prob__a=[0.1, 0.3, 0.5, 0.5, 0.5, 0.7, 0.9])
    studies = study_probabilities(images, prob_cols=("prob__a", "prob"))
    assert studies["prob__a"].tolist() == pytest.approx([0.2, 0.6, 0.5, 0.9])
    images.loc[1, "label"] = 0
    with pytest.raises(UsageError, match="s1"):
        study_probabilities(images)
    with pytest.raises(UsageError, match="prob__zz"):
        study_probabilities(images, prob_cols=("prob__zz",))


def _study_frame(seed: int, n_per_part: int = 60):
    rng = np.random.default_rng(seed)
    parts = ["XR_WRIST", "XR_ELBOW", "XR_HAND", ""]
    rows = []
    for part in parts:
        for i in range(n_per_part):
            label = int(rng.random() < 0.45) if part != "XR_HAND" else 0  # XR_HAND: one class
            rows.append(
                {
                    "study": f"{part}/s{i}",
                    "body_part": part,
                    "label": label,
                    "prob": round(float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1)), 2),
                }
            )
    frame = pd.DataFrame(rows)
    frame.loc[[3, 70], "prob"] = np.nan  # failed studies
    frame["label"] = frame["label"].astype("Int64")
    frame.loc[5, "label"] = pd.NA  # unknown label
    return frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_metrics_equal_sklearn_per_group(seed):
    frame = _study_frame(seed)
    with pytest.warns(UndefinedMetricWarning, match="study XR_HAND"):
        result = grouped_metrics(frame, bootstrap=BootstrapSettings(n_resamples=100, seed=seed), name="study")
    assert list(result["by_body_part"]) == ["XR_ELBOW", "XR_HAND", "XR_WRIST", "unknown"]
    valid = frame["label"].notna() & frame["prob"].notna()
    assert result["overall"]["n"] == int(valid.sum())
    assert result["overall"]["n_excluded"] == 3
    for part, m in [("overall", result["overall"]), *result["by_body_part"].items()]:
        rows = frame[valid] if part == "overall" else frame[valid & (frame["body_part"].replace("", "unknown") == part)]
        y, p = rows["label"].astype(int).to_numpy(), rows["prob"].to_numpy()
        pred = (p > 0.5).astype(int)
        assert m["n"] == len(rows)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
        if part == "XR_HAND":
            assert m["auc"] is None and m["auc_ci"] == [None, None]
        else:
            assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
            assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-9)


def test_grouped_metrics_keeps_a_part_whose_rows_are_all_excluded():
    frame = pd.DataFrame(
        {
            "body_part": ["XR_HAND", "XR_HAND", "XR_WRIST"],
            "label": [1, 0, 1],
            "prob": [0.9, 0.1, np.nan],
        }
    )
    result = grouped_metrics(frame, bootstrap=BootstrapSettings(n_resamples=10))
    wrist = result["by_body_part"]["XR_WRIST"]
    assert wrist["n"] == 0 and wrist["n_excluded"] == 1 and wrist["accuracy"] is None
    assert result["by_body_part"]["XR_HAND"]["auc"] == 1.0


def test_evaluate_predictions_on_image_rows_gives_both_levels():
    rng = np.random.default_rng(0)
    images = pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(90)],
            "study": [f"s{i // 3}" for i in range(90)],
            "body_part": ["XR_HAND"] * 45 + ["XR_WRIST"] * 45,
            "label": [int((i // 3) % 2) for i in range(90)],
            "prob": rng.random(90).round(3),
            "status": ["ok"] * 90,
        }
    )
    images.loc[4, "status"] = "truncated"  # its probability must not count
    result = evaluate_predictions(images, bootstrap=BootstrapSettings(n_resamples=20))
    assert list(result) == ["threshold", "bootstrap", "study", "image"]
    assert result["image"]["overall"]["n"] == 89 and result["image"]["overall"]["n_excluded"] == 1
    ok = images.drop(index=4)
    studies = ok.groupby("study").agg(label=("label", "first"), prob=("prob", "mean"))
    assert result["study"]["overall"]["n"] == 30
    assert result["study"]["overall"]["auc"] == pytest.approx(
        roc_auc_score(studies["label"], studies["prob"]), abs=1e-9
    )
    assert result["image"]["overall"]["auc"] == pytest.approx(roc_auc_score(ok["label"], ok["prob"]), abs=1e-9)


def test_evaluate_predictions_on_study_rows_has_no_image_level():
    with pytest.warns(UndefinedMetricWarning, match="study XR_HAND"):
        result = evaluate_predictions(_study_frame(0), bootstrap=NO_BOOTSTRAP)
    assert "image" not in result and result["threshold"] == 0.5
    assert result["bootstrap"] == {"n_resamples": 0, "ci": 0.95, "seed": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["label", "body_part"]), "body_part, label"),
        (lambda f: f.assign(label=["2"] + ["1"] * (len(f) - 1)), "'2'"),
        (lambda f: f.assign(prob=[1.7] + [0.5] * (len(f) - 1)), "1.7"),
        (lambda f: f.assign(prob=["high"] + [0.5] * (len(f) - 1)), "high"),
    ],
)
def test_evaluate_predictions_names_bad_input(change, message):
    frame = change(_study_frame(0))
    with pytest.raises(UsageError, match=message):
        evaluate_predictions(frame, bootstrap=NO_BOOTSTRAP)


def test_evaluate_predictions_rejects_bad_threshold():
    with pytest.raises(UsageError, match="1.5"):
        evaluate_predictions(_study_frame(0), threshold=1.5)


def test_format_metrics_table_lists_parts_and_overall():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        level = grouped_metrics(_study_frame(1), bootstrap=BootstrapSettings(n_resamples=50))
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(format_metrics_table(level, title="Study-level metrics"))
    text = console.export_text()
    assert "Study-level metrics" in text
    for part in ("XR_ELBOW", "XR_HAND", "XR_WRIST", "unknown", "overall"):
        assert part in text
    assert "n/a" in text  # XR_HAND has one class: AUC n/a
    kappa = level["overall"]["kappa"]
    lo, hi = level["overall"]["kappa_ci"]
    assert f"{kappa:.3f} [{lo:.3f},{hi:.3f}]" in text
    assert "excluded (no label or no probability): 3" in text


def test_build_metrics_orders_keys_and_judges_each_model_on_its_own_parts():
    frame = _study_frame(2).assign(prob__gen=lambda f: f["prob"], prob__wrist=lambda f: 1 - f["prob"])
    frame.loc[frame["body_part"] != "XR_WRIST", "prob__wrist"] = np.nan
    models = [ModelColumn("gen", "prob__gen"), ModelColumn("wrist", "prob__wrist", ("XR_WRIST",))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = build_metrics(frame, frame, threshold=0.4, bootstrap=NO_BOOTSTRAP, ensemble="mean", models=models)
        alone = grouped_metrics(frame, threshold=0.4, bootstrap=NO_BOOTSTRAP)
    assert list(result) == ["threshold", "ensemble", "bootstrap", "study", "image", "models"]
    assert result["threshold"] == 0.4 and result["ensemble"] == "mean"
    assert result["bootstrap"] == {"n_resamples": 0, "ci": 0.95, "seed": 0}
    assert result["study"] == alone == result["image"]
    assert result["models"]["gen"]["study"] == alone  # the same column under another name
    wrist = result["models"]["wrist"]["study"]
    assert list(wrist["by_body_part"]) == ["XR_WRIST"]  # rows of its own part only
    own = frame[frame["body_part"] == "XR_WRIST"]
    rows = own.dropna(subset=["label", "prob__wrist"])
    assert wrist["overall"]["n"] == len(rows) and wrist["overall"]["n_excluded"] == len(own) - len(rows) == 2
    assert wrist["overall"]["auc"] == pytest.approx(roc_auc_score(rows["label"].astype(int), rows["prob__wrist"]))
    json.dumps(result, allow_nan=False)  # plain JSON: no NaN, no numpy scalars


def test_confusion_counts_are_read_back_exactly_from_a_group():
    y, p = _random_rows(3, n=999)
    group = binary_metrics(y, p, threshold=0.45, bootstrap=NO_BOOTSTRAP)
    pred = (p > 0.45).astype(int)
    expected = tuple(int(np.sum((y == a) & (pred == b))) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)))
    assert confusion_counts(group) == expected
    with pytest.warns(UndefinedMetricWarning):
        negatives = binary_metrics(np.zeros(4, int), np.array([0.1, 0.9, 0.2, 0.3]), bootstrap=NO_BOOTSTRAP)
    assert confusion_counts(negatives) == (3, 1, 0, 0)
    assert confusion_counts(binary_metrics([], [], bootstrap=NO_BOOTSTRAP)) == (0, 0, 0, 0)


def test_format_metric_reads_undefined_values_as_missing():
    assert format_metric(0.71234) == "0.712" and format_metric(0.5, digits=1) == "0.5"
    assert format_metric(None) == "n/a" and format_metric(float("nan")) == "n/a"
    assert format_metric(None, missing="-") == "-"


def test_fold_undefined_warnings_makes_one_warning_of_many():
    with pytest.warns(UndefinedMetricWarning) as record:
        with fold_undefined_warnings(limit=2):
            for part in ("XR_HAND", "XR_WRIST", "XR_ELBOW"):
                binary_metrics(np.ones(3, int), np.full(3, 0.7), bootstrap=NO_BOOTSTRAP, group=f"study {part}")
    assert len(record) == 1
    assert str(record[0].message) == (
        "ROC AUC is undefined (only one class) in 3 groups, null in metrics.json: "
        "study XR_HAND; study XR_WRIST; ... 1 more"
    )


def test_per_part_thresholds_predict_each_row_with_its_part_threshold():
    """A fitted ensemble's thresholds: every point estimate equals scikit-learn on the per-row predictions."""
    frame = _study_frame(4)
    cuts = PartThresholds({"XR_WRIST": 0.3, "XR_ELBOW": 0.7}, default=0.55)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = grouped_metrics(frame, threshold=cuts, bootstrap=BootstrapSettings(n_resamples=50, seed=2))
    rows = frame.dropna(subset=["label", "prob"])
    y = rows["label"].astype(int).to_numpy()
    t = rows["body_part"].map({"XR_WRIST": 0.3, "XR_ELBOW": 0.7}).fillna(0.55).to_numpy()
    pred = (rows["prob"].to_numpy() > t).astype(int)
    assert result["overall"]["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)
    assert result["overall"]["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    for part, threshold in (("XR_WRIST", 0.3), ("XR_ELBOW", 0.7), ("unknown", 0.55)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            alone = grouped_metrics(
                frame.loc[frame["body_part"].replace("", "unknown") == part],
                threshold=threshold,
                bootstrap=BootstrapSettings(n_resamples=50, seed=2),
            )
        assert result["by_body_part"][part] == alone["overall"], part  # one threshold per part: same as a scalar
    assert cuts.to_json() == {"by_body_part": {"XR_ELBOW": 0.7, "XR_WRIST": 0.3}, "default": 0.55}


def test_build_metrics_with_an_ensemble_info_adds_its_thresholds_details_and_baselines():
    frame = _study_frame(5).assign(prob__gen=lambda f: f["prob"], plain=lambda f: 1 - f["prob"])
    cuts = PartThresholds({"XR_WRIST": 0.3}, default=0.6)
    info = EnsembleInfo(
        "fitted",
        thresholds=cuts,
        details={"ensemble_file": {"sha256": "ab"}, "tta": "flip"},
        baselines=(ModelColumn("body_part", "plain"),),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = build_metrics(
            frame, threshold=0.4, bootstrap=NO_BOOTSTRAP, ensemble=info, models=[ModelColumn("gen", "prob__gen")]
        )
        ensemble = grouped_metrics(frame, threshold=cuts, bootstrap=NO_BOOTSTRAP)
        models = grouped_metrics(frame, prob_col="prob__gen", threshold=0.4, bootstrap=NO_BOOTSTRAP)
        plain = grouped_metrics(frame, prob_col="plain", threshold=0.4, bootstrap=NO_BOOTSTRAP)
    assert list(result) == [
        "threshold",
        "ensemble",
        "ensemble_thresholds",
        "ensemble_file",
        "tta",
        "bootstrap",
        "study",
        "models",
        "baselines",
    ]
    assert result["threshold"] == 0.4 and result["ensemble"] == "fitted"
    assert result["ensemble_thresholds"] == cuts.to_json()
    assert result["study"] == ensemble  # the ensemble at its per-part thresholds
    assert result["models"]["gen"]["study"] == models  # the models at the scalar threshold
    assert result["baselines"]["body_part"]["study"] == plain
    # a plain name is exactly the string form
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert build_metrics(frame, ensemble=EnsembleInfo("mean")) == build_metrics(frame, ensemble="mean")
    json.dumps(result, allow_nan=False)
