"""Ensemble arithmetic, checked exactly against numpy on tiny ONNX models (no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scoring_fixtures import (
    ENSEMBLE_LAYOUT,
    TINY,
    expected_prob,
    make_tree,
    read_images,
    read_studies,
    tiny,
)
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mura_ens.errors import UsageError
from mura_ens.scoring import ensemble as ens
from mura_ens.scoring.models import load_model_spec
from mura_ens.scoring.score import ScoreSettings, score

SERVES = {
    "gen_a": None,
    "gen_b": None,
    "spec_hand": {"XR_HAND"},
    "spec_elbow_wrist": {"XR_ELBOW", "XR_WRIST"},
}


def serving(part: str) -> list[str]:
    return [name for name, parts in SERVES.items() if parts is None or part in parts]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"), ENSEMBLE_LAYOUT, seed=3)


@pytest.fixture(scope="module")
def body_part_run(tree, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_body_part")
    result = score(
        tree,
        models_dir=tiny_models["gen_a"].parents[1],
        out=out,
        settings=ScoreSettings(ensemble="body_part", batch_size=4),
        progress=False,
    )
    return result, out


def test_image_probabilities_are_each_models_formula_and_specialists_only_score_their_part(body_part_run):
    _, out = body_part_run
    images = read_images(out)
    assert len(images) == sum(n for _, _, n in ENSEMBLE_LAYOUT)
    assert (images["status"] == "ok").all()
    for row in images.itertuples(index=False):
        for name in SERVES:
            value = getattr(row, f"prob__{name}")
            if name in serving(row.body_part):
                # ORT computes in float32: 1e-6 is its rounding, not slack in the arithmetic.
                assert value == pytest.approx(expected_prob(row.path, TINY[name]), abs=1e-6)
            else:
                assert np.isnan(value), (name, row.body_part)
        # image ensemble = mean over the models serving the part
        members = [getattr(row, f"prob__{n}") for n in serving(row.body_part)]
        assert row.prob == pytest.approx(float(np.mean(members)), rel=1e-12, abs=0)


def test_study_probability_is_mean_of_image_probabilities_then_mean_over_serving_models(body_part_run):
    _, out = body_part_run
    images, studies = read_images(out), read_studies(out)
    assert list(studies["study"]) == list(dict.fromkeys(images["study"]))
    assert set(studies.columns) >= {
        "study",
        "patient",
        "body_part",
        "n_images",
        "n_scored",
        "label",
        "prob",
        "pred",
        "status",
    }
    for study in studies.itertuples(index=False):
        rows = images[images["study"] == study.study]
        assert study.n_images == study.n_scored == len(rows)
        per_model = {}
        for name in SERVES:
            value = getattr(study, f"prob__{name}")
            if name in serving(study.body_part):
                per_model[name] = np.mean(rows[f"prob__{name}"].to_numpy())
                assert value == pytest.approx(per_model[name], rel=1e-12, abs=0)
            else:
                assert np.isnan(value)
        assert study.prob == pytest.approx(np.mean(list(per_model.values())), rel=1e-12, abs=0)
        assert study.pred == int(study.prob > 0.5)
        assert study.status == "ok"
        assert study.label == rows["label"].iloc[0]
    # the specialists really changed something: hand studies average three models, shoulders two
    hand = studies[studies["body_part"] == "XR_HAND"].iloc[0]
    assert hand["prob"] != pytest.approx((hand["prob__gen_a"] + hand["prob__gen_b"]) / 2)


def test_mean_ensemble_averages_generalists_only(tree, tiny_models, tmp_path):
    result = score(
        tree,
        models_dir=tiny_models["gen_a"].parents[1],
        out=tmp_path,
        settings=ScoreSettings(ensemble="mean"),
        progress=False,
    )
    studies, images = read_studies(tmp_path), read_images(tmp_path)
    expected = studies[["prob__gen_a", "prob__gen_b"]].to_numpy().mean(axis=1)
    np.testing.assert_allclose(studies["prob"].to_numpy(), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        images["prob"], images[["prob__gen_a", "prob__gen_b"]].to_numpy().mean(axis=1), rtol=1e-12
    )
    # specialists are still scored and reported in their own columns
    assert images.loc[images["body_part"] == "XR_HAND", "prob__spec_hand"].notna().all()
    assert result.metrics["ensemble"] == "mean"


def test_mean_ensemble_without_generalist_is_refused_before_any_work(tree, tiny_models, tmp_path):
    with pytest.raises(UsageError, match="generalist"):
        score(
            tree,
            model_files=[tiny_models["spec_hand"]],
            out=tmp_path / "o",
            settings=ScoreSettings(ensemble="mean"),
            progress=False,
        )
    assert not (tmp_path / "o").exists()


def test_models_with_different_input_sizes_decode_each_image_once(tree, tiny_models, tmp_path, monkeypatch):
    import mura_ens.data.images as images_module

    calls = []
    real = images_module.decoded  # what the runner decodes with (holding the image's share of the byte budget)

    def counting(path, **kw):
        calls.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(images_module, "decoded", counting)
    sizes = {load_model_spec(p).input_size for p in tiny_models.values() if "runs" in p.parts}
    assert len(sizes) == 4
    score(tree, models_dir=tiny_models["gen_a"].parents[1], out=tmp_path, progress=False)
    n_images = sum(n for _, _, n in ENSEMBLE_LAYOUT)
    assert len(calls) == len(set(calls)) == n_images


def test_threshold_option_drives_predictions_and_metrics(tree, tiny_models, tmp_path):
    result = score(
        tree,
        models_dir=tiny_models["gen_a"].parents[1],
        out=tmp_path,
        settings=ScoreSettings(threshold=0.46),
        progress=False,
    )
    studies = read_studies(tmp_path)
    assert result.threshold == 0.46
    assert list(studies["pred"]) == [int(p > 0.46) for p in studies["prob"]]
    assert len(set(studies["pred"])) == 2, "threshold chosen to split these studies"
    assert json.loads((tmp_path / "metrics.json").read_text())["threshold"] == 0.46


def test_default_threshold_is_the_models_own_when_they_agree(tiny_models, tmp_path):
    a = load_model_spec(tiny.make_tiny_model(tmp_path / "a" / "model.onnx", a=1, b=0, threshold=0.3))
    b = load_model_spec(tiny.make_tiny_model(tmp_path / "b" / "model.onnx", a=1, b=0, threshold=0.3))
    c = load_model_spec(tiny.make_tiny_model(tmp_path / "c" / "model.onnx", a=1, b=0, threshold=0.7))
    assert ens.resolve_threshold([a, b]) == 0.3
    assert ens.resolve_threshold([a, c]) == 0.5
    assert ens.resolve_threshold([a, c], 0.25) == 0.25
    with pytest.raises(UsageError, match="1.5"):
        ens.resolve_threshold([a], 1.5)


def test_metrics_json_equals_sklearn_on_studies_csv(body_part_run):
    _, out = body_part_run
    metrics = json.loads((out / "metrics.json").read_text())
    studies, images = read_studies(out), read_images(out)
    threshold = metrics["threshold"]

    def check(group, frame, column="prob"):
        y, p = frame["label"].to_numpy(dtype=int), frame[column].to_numpy()
        assert group["n"] == len(frame)
        assert group["accuracy"] == pytest.approx(accuracy_score(y, p > threshold), abs=1e-12)
        kappa = cohen_kappa_score(y, (p > threshold).astype(int))
        assert group["kappa"] == (None if np.isnan(kappa) else pytest.approx(kappa, abs=1e-12))
        if len(set(y)) == 2:
            assert group["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        else:
            assert group["auc"] is None

    check(metrics["study"]["overall"], studies)
    for part, group in metrics["study"]["by_body_part"].items():
        check(group, studies[studies["body_part"] == part])
    check(metrics["image"]["overall"], images)
    # each model's own metrics, on the body parts it serves
    check(metrics["models"]["gen_b"]["study"]["overall"], studies, "prob__gen_b")
    hand = metrics["models"]["spec_hand"]["study"]
    assert set(hand["by_body_part"]) == {"XR_HAND"}
    check(hand["overall"], studies[studies["body_part"] == "XR_HAND"], "prob__spec_hand")


def test_study_table_statuses_for_failed_and_unserved_studies(tiny_models):
    import pandas as pd

    gen = load_model_spec(tiny_models["gen_a"])
    hand = load_model_spec(tiny_models["spec_hand"])
    images = pd.DataFrame(
        {
            "path": ["a1", "a2", "b1", "c1", "d1"],
            "study": ["A", "A", "B", "C", "D"],
            "patient": ["p1", "p1", "p2", "p3", "p4"],
            "body_part": ["XR_HAND", "XR_HAND", "XR_HAND", "XR_KNEE_UNKNOWN", ""],
            "label": pd.array([1, 1, 0, pd.NA, 0], dtype="Int64"),
            gen.column: [0.2, np.nan, np.nan, np.nan, np.nan],
            hand.column: [0.6, np.nan, np.nan, np.nan, np.nan],
            "status": ["ok", "truncated", "unreadable", "no_model_for_body_part", "no_model_for_body_part"],
        }
    )
    # only the hand specialist: B has failed images, C and D have no model at all
    table = ens.study_table(images.drop(columns=[gen.column]), [hand], ensemble="body_part", threshold=0.5)
    assert list(table["status"]) == ["ok", "all_images_failed", "no_model_for_body_part", "no_model_for_body_part"]
    assert table.loc[0, "prob"] == 0.6 and table.loc[0, "n_scored"] == 1 and table.loc[0, "n_images"] == 2
    assert table["prob"].iloc[1:].isna().all() and table["pred"].iloc[1:].isna().all()
    # with a generalist as well: A averages both models' study probabilities
    table = ens.study_table(images, [gen, hand], ensemble="body_part", threshold=0.5)
    assert table.loc[0, "prob"] == pytest.approx(0.4, abs=1e-15) and table.loc[0, "pred"] == 0
