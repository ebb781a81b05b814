"""`score --ensemble fitted --ensemble-file ensemble.json` on tiny ONNX models (no TensorFlow).

The ensemble files here are written by hand, so every expected probability, prediction and
metric is computed from the file's numbers and the per-model study probabilities of
``studies.csv`` (themselves checked against the tiny models' formula in test_scoring_ensemble).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy.special import expit, logit
from scoring_fixtures import ENSEMBLE_LAYOUT, make_tree, read_images, read_studies
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.fitting import FitSettings, FittedEnsemble, Member, PartModel, fit_scored_dir
from mura_ens.fitting.calibration import Calibrator
from mura_ens.metrics import BootstrapSettings
from mura_ens.scoring.models import load_models
from mura_ens.scoring.score import FittingOverlapWarning, ScoreSettings, score

BOOT = BootstrapSettings(n_resamples=40, seed=1)
HAND_W = {"gen_a": 0.5, "gen_b": 0.2, "spec_hand": 0.3}
HAND_CAL = (2.0, -0.5)  # Platt a, b
GLOBAL_CAL = (1.5, 0.1)
THRESHOLDS = {"XR_HAND": 0.4, "XR_WRIST": 0.6}
GLOBAL_THRESHOLD = 0.45


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("fitted_tree"), ENSEMBLE_LAYOUT, seed=4)


@pytest.fixture(scope="module")
def runs(tiny_models):
    return tiny_models["gen_a"].parents[1]


def hand_made(runs, *, fitting_studies=(), sha_override=None) -> FittedEnsemble:
    """XR_HAND fitted (weights, Platt, 0.4); XR_WRIST kept at the plain mean (0.6); others: global Platt, 0.45."""
    members = tuple(Member(m.name, (sha_override or {}).get(m.name, m.sha256)) for m in load_models(runs))
    third = 1.0 / 3.0
    parts = {
        "XR_HAND": PartModel("fitted", dict(HAND_W), Calibrator("platt", *HAND_CAL), THRESHOLDS["XR_HAND"], 8, 4),
        "XR_WRIST": PartModel(
            "plain_mean",
            {"gen_a": third, "gen_b": third, "spec_elbow_wrist": third},
            Calibrator(),
            THRESHOLDS["XR_WRIST"],
            7,
            3,
        ),
    }
    fitting = {"n_studies": 15, "n_positive": 7, "studies": sorted(fitting_studies)}
    return FittedEnsemble(
        members=members,
        parts=parts,
        global_calibrator=Calibrator("platt", *GLOBAL_CAL),
        global_threshold=GLOBAL_THRESHOLD,
        settings=FitSettings(calibrate="platt"),
        fitting=fitting,
        mura_ens_version="0.1.0",
    )


def expected(frame) -> np.ndarray:
    """The file's arithmetic on a studies.csv / images.csv frame, by hand."""
    out = []
    for row in frame.itertuples(index=False):
        p = {name: getattr(row, f"prob__{name}") for name in ("gen_a", "gen_b", "spec_hand", "spec_elbow_wrist")}
        if row.body_part == "XR_HAND":
            pooled = sum(w * p[name] for name, w in HAND_W.items())
            out.append(expit(HAND_CAL[0] * logit(pooled) + HAND_CAL[1]))
        elif row.body_part == "XR_WRIST":
            out.append((p["gen_a"] + p["gen_b"] + p["spec_elbow_wrist"]) / 3.0)
        else:  # a part the file does not list: the plain mean of the models serving it, the global calibrator
            present = [v for v in p.values() if not np.isnan(v)]
            out.append(expit(GLOBAL_CAL[0] * logit(sum(present) / len(present)) + GLOBAL_CAL[1]))
    return np.array(out)


def cut(frame) -> np.ndarray:
    return np.array([THRESHOLDS.get(part, GLOBAL_THRESHOLD) for part in frame["body_part"]])


@pytest.fixture(scope="module")
def fitted_run(tree, runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fitted_run")
    ensemble_file = hand_made(runs).save(folder / "ensemble.json")
    out = folder / "out"
    settings = ScoreSettings(ensemble="fitted", ensemble_file=ensemble_file, batch_size=4, bootstrap=BOOT)
    result = score(tree, models_dir=runs, out=out, settings=settings, progress=False)
    plain = folder / "plain"
    score(tree, models_dir=runs, out=plain, settings=ScoreSettings(batch_size=4, bootstrap=BOOT), progress=False)
    return result, out, plain, ensemble_file


def test_fitted_probabilities_and_predictions_are_the_files_arithmetic(fitted_run):
    _, out, plain, _ = fitted_run
    studies, images = read_studies(out), read_images(out)
    # the per-model columns are those of the plain run: only prob and pred change
    reference = read_studies(plain)
    model_columns = [c for c in studies.columns if c.startswith("prob__")]
    assert studies[model_columns].equals(reference[model_columns])
    assert list(studies.columns) == list(reference.columns)
    assert np.allclose(studies["prob"], expected(studies), rtol=0, atol=1e-12)
    assert list(studies["pred"]) == [int(p > t) for p, t in zip(studies["prob"], cut(studies))]
    assert np.allclose(images["prob"], expected(images), rtol=0, atol=1e-12)
    # a threshold in between shows the per-part thresholds at work
    assert set(studies["body_part"]) == {"XR_HAND", "XR_WRIST", "XR_SHOULDER"}


def test_fitted_metrics_use_the_per_part_thresholds_and_keep_the_plain_mean_as_baseline(fitted_run):
    _, out, plain, ensemble_file = fitted_run
    metrics = json.loads((out / "metrics.json").read_text())
    plain_metrics = json.loads((plain / "metrics.json").read_text())
    studies = read_studies(out)
    assert metrics["ensemble"] == "fitted"
    assert metrics["ensemble_thresholds"] == {
        "by_body_part": {"XR_HAND": 0.4, "XR_WRIST": 0.6},
        "default": GLOBAL_THRESHOLD,
    }
    assert metrics["ensemble_file"] == {
        "path": str(ensemble_file.resolve()),
        "sha256": hashlib.sha256(ensemble_file.read_bytes()).hexdigest(),
        "overlapping_studies": 0,
    }
    y, pred, prob = studies["label"].astype(int), studies["pred"].astype(int), studies["prob"]
    overall = metrics["study"]["overall"]
    assert overall["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)
    assert overall["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert overall["auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    for part, group in metrics["study"]["by_body_part"].items():
        rows = studies["body_part"] == part
        assert group["accuracy"] == pytest.approx(accuracy_score(y[rows], pred[rows]), abs=1e-12), part
    # the models and the plain body_part mean are reported as in a body_part run
    assert metrics["models"] == plain_metrics["models"]
    assert metrics["baselines"]["body_part"]["study"] == plain_metrics["study"]
    assert metrics["baselines"]["body_part"]["image"] == plain_metrics["image"]
    assert list(metrics)[:5] == ["threshold", "ensemble", "ensemble_thresholds", "ensemble_file", "bootstrap"]


def test_the_members_must_match_the_models_found_before_any_image_is_decoded(tree, runs, tmp_path, capsys, monkeypatch):
    import mura_ens.data.images as images_module

    decoded = []
    real = images_module.decode
    monkeypatch.setattr(images_module, "decode", lambda path: decoded.append(path) or real(path))
    changed = hand_made(runs, sha_override={"gen_b": "0" * 64}).save(tmp_path / "changed.json")
    out = tmp_path / "out"
    command = ["score", str(tree), "--models", str(runs), "--out", str(out), "--ensemble", "fitted"]
    code = main([*command, "--ensemble-file", str(changed)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "do not match the fitted ensemble's members" in err and "different sha256 for gen_b" in err
    assert str(changed) in err
    # a model missing: named too
    good = hand_made(runs).save(tmp_path / "good.json")
    gen_a = runs / "gen_a" / "model.onnx"
    code = main(
        ["score", str(tree), "--model", str(gen_a), "--out", str(out), "--ensemble", "fitted"]
        + ["--ensemble-file", str(good)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing gen_b, spec_elbow_wrist, spec_hand" in err
    assert decoded == [] and not out.exists()


def test_ensemble_file_and_fitted_go_together(tmp_path, tree, runs, capsys):
    with pytest.raises(UsageError, match="--ensemble fitted needs --ensemble-file"):
        ScoreSettings(ensemble="fitted")
    with pytest.raises(UsageError, match="only used with --ensemble fitted, not with --ensemble mean"):
        ScoreSettings(ensemble="mean", ensemble_file="ensemble.json")
    code = main(["score", str(tree), "--models", str(runs), "--out", str(tmp_path), "--ensemble", "fitted"])
    assert code == 2 and capsys.readouterr().err.count("\n") == 1
    missing = tmp_path / "nope.json"
    code = main(
        ["score", str(tree), "--models", str(runs), "--out", str(tmp_path)]
        + ["--ensemble", "fitted", "--ensemble-file", str(missing)]
    )
    assert code == 2 and f"ensemble file not found: {missing}" in capsys.readouterr().err


def test_scoring_studies_of_the_fitting_set_warns_once(tree, runs, tmp_path, capsys):
    from mura_ens.data.layout import walk_mura

    keys = sorted(set(walk_mura(tree).manifest["study"]))
    ensemble_file = hand_made(runs, fitting_studies=keys[:3] + ["train/XR_HAND/patient1/study1"]).save(
        tmp_path / "e.json"
    )
    out = tmp_path / "out"
    code = main(
        ["score", str(tree), "--models", str(runs), "--out", str(out), "--ensemble", "fitted"]
        + ["--ensemble-file", str(ensemble_file), "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("mura-ens: warning:")]
    assert len(warnings) == 1
    assert f"3 of the {len(keys)} studies being scored were in the fitting set of {ensemble_file}" in warnings[0]
    assert json.loads((out / "metrics.json").read_text())["ensemble_file"]["overlapping_studies"] == 3
    assert "ensemble fitted (" in captured.out and "per-part thresholds" in captured.out
    assert "plain body_part mean (baseline)" in captured.out


def test_an_ensemble_fitted_by_fit_ensemble_scores_as_its_apply_says(tree, runs, tmp_path):
    """score -> fit on that folder -> score with the file: prob is FittedEnsemble.apply of the first studies.csv."""
    first = tmp_path / "first"
    score(tree, models_dir=runs, out=first, settings=ScoreSettings(batch_size=4, bootstrap=BOOT), progress=False)
    ensemble = fit_scored_dir(first, FitSettings(calibrate="platt", min_studies=2, cv_folds=2))  # models.json
    path = ensemble.save(tmp_path / "ensemble.json")
    with pytest.warns(FittingOverlapWarning):
        settings = ScoreSettings(ensemble="fitted", ensemble_file=path, batch_size=4, bootstrap=BOOT)
        score(tree, models_dir=runs, out=tmp_path / "second", settings=settings, progress=False)
    prob, pred = ensemble.apply(read_studies(first))
    studies = read_studies(tmp_path / "second")
    assert np.array_equal(studies["prob"].to_numpy(), prob, equal_nan=True)
    assert list(studies["pred"]) == list(pred)


def test_evaluate_with_the_ensemble_file_reproduces_the_fitted_metrics(fitted_run, tmp_path, capsys):
    from mura_ens.cli.evaluate import evaluate_file, fitted_thresholds

    _, out, _, ensemble_file = fitted_run
    metrics = json.loads((out / "metrics.json").read_text())
    again = evaluate_file(out / "studies.csv", threshold=fitted_thresholds(ensemble_file), bootstrap=BOOT)
    assert again["study"] == metrics["study"]
    assert again["ensemble_thresholds"] == metrics["ensemble_thresholds"]
    code = main(["evaluate", str(out / "studies.csv"), "--ensemble-file", str(ensemble_file), "-t", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "give --threshold or --ensemble-file, not both" in err
    code = main(
        ["evaluate", str(out / "studies.csv"), "--ensemble-file", str(ensemble_file), "-o", str(tmp_path / "m.json")]
    )
    assert code == 0 and "per-part thresholds" in capsys.readouterr().out


def test_an_unlabelled_input_gets_fitted_predictions_and_the_file_in_the_report(runs, tmp_path):
    tree = make_tree(tmp_path / "data", [("XR_HAND", None, 2), ("XR_WRIST", None, 1), ("XR_ELBOW", None, 1)], seed=9)
    ensemble_file = hand_made(runs).save(tmp_path / "ensemble.json")
    out = tmp_path / "out"
    settings = ScoreSettings(ensemble="fitted", ensemble_file=ensemble_file, batch_size=4)
    result = score(tree, models_dir=runs, out=out, settings=settings, progress=False)
    assert result.metrics is None and not (out / "metrics.json").exists()
    studies = read_studies(out)
    assert np.allclose(studies["prob"], expected(studies), rtol=0, atol=1e-12)
    assert list(studies["pred"]) == [int(p > t) for p, t in zip(studies["prob"], cut(studies))]
    report = (out / "report.html").read_text()
    assert '<h2 id="fitted">Fitted ensemble</h2>' in report
    assert hashlib.sha256(ensemble_file.read_bytes()).hexdigest() in report
    assert json.loads((out / "models.json").read_text())["models"][0]["sha256"] in report


# ---- issue 22: precision / TTA binding, validated files, the table's arithmetic -------------------


def _score_fitted(tree, runs, out, ensemble_file, *extra):
    return main(
        ["score", str(tree), "--models", str(runs), "--out", str(out), "--ensemble", "fitted"]
        + ["--ensemble-file", str(ensemble_file), "--no-progress", *extra]
    )


def test_an_ensemble_fitted_on_other_scores_is_refused_unless_allowed_and_then_flagged(tree, runs, tmp_path, capsys):
    from dataclasses import replace

    fp32 = replace(hand_made(runs), precision="fp32", tta="none")
    path = fp32.save(tmp_path / "fp32.json")
    out = tmp_path / "out"
    assert _score_fitted(tree, runs, out, path, "--tta", "flip") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tta flip (fitted on --tta none scores)" in err and "--allow-mismatch" in err
    assert not out.exists()
    int8 = replace(fp32, precision="int8").save(tmp_path / "int8.json")
    assert _score_fitted(tree, runs, out, int8) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "precision fp32 (fitted on int8 scores)" in err and not out.exists()
    # allowed: scored, and the warning is in metrics.json and the report
    assert _score_fitted(tree, runs, out, path, "--tta", "flip", "--allow-mismatch") == 0
    assert "--allow-mismatch" in capsys.readouterr().err
    warnings = json.loads((out / "metrics.json").read_text())["ensemble_file"]["warnings"]
    assert warnings == [
        "applied with --allow-mismatch to --tta flip (fitted on --tta none scores): "
        "the fitted weights and thresholds may not hold"
    ]
    assert "applied with --allow-mismatch to --tta flip" in (out / "report.html").read_text()
    # an older file (no precision / TTA recorded) loads, and nothing is checked
    old = hand_made(runs).to_dict()
    del old["precision"], old["tta"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = FittedEnsemble.load(tmp_path / "old.json")
    assert loaded.precision is None and loaded.unknown_scoring() == ["precision", "TTA"]
    assert loaded.scoring_mismatches("int8", "flip") == []


def _break(data: dict, where: str, value) -> dict:
    """A copy of ``data`` with the dotted field ``where`` set to ``value`` (``DEL`` removes it)."""
    import copy

    out = copy.deepcopy(data)
    *path, last = where.split(".")
    node = out
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value == "DEL":
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("parts.XR_HAND.threshold", 1.5, "parts.XR_HAND.threshold must be in [0, 1], got 1.5"),
        ("parts.XR_WRIST.threshold", float("nan"), "parts.XR_WRIST.threshold must be a finite number, got nan"),
        ("global.threshold", -0.1, "global.threshold must be in [0, 1], got -0.1"),
        ("parts.XR_HAND.weights.gen_a", -0.2, "parts.XR_HAND.weights.gen_a must be >= 0, got -0.2"),
        ("parts.XR_HAND.weights.gen_b", float("inf"), "parts.XR_HAND.weights.gen_b must be a finite number, got inf"),
        ("parts.XR_HAND.weights", {}, "parts.XR_HAND.weights is empty"),
        ("parts.XR_HAND.weights", {"gen_a": 0, "gen_b": 0}, "parts.XR_HAND.weights must have a positive sum"),
        ("parts.XR_HAND.weights", {"nobody": 1.0}, "parts.XR_HAND.weights names a model that is not a member"),
        ("parts.XR_HAND.calibrator.a", -1.0, "parts.XR_HAND.calibrator.a (Platt slope) must be >= 0"),
        (
            "global.calibrator",
            {"method": "isotonic", "x": [0, 0.6, 0.5, 1], "y": [0, 0.2, 0.3, 1]},
            "global.calibrator.x[2] must be > x[1]",
        ),
        (
            "global.calibrator",
            {"method": "isotonic", "x": [0, 0.5, 1], "y": [0, 0.4, 1.25]},
            "global.calibrator.y[2] must be in [0, 1], got 1.25",
        ),
        ("parts.XR_KNEE", {}, "parts.XR_KNEE is not a known body part"),
        ("members.1.name", "gen_a", "members[1].name repeats an earlier member, got 'gen_a'"),
        ("members.0.sha256", "abc", "members[0].sha256 must be 64 lowercase hex digits, got 'abc'"),
        ("parts.XR_HAND.status", "great", "parts.XR_HAND.status must be one of fitted, weights_only"),
        ("parts.XR_WRIST.n_positive", 99, "parts.XR_WRIST.n_positive must be <= n_studies (7), got 99"),
        ("global", "DEL", "global is missing"),
        ("parts.XR_HAND.threshold", "DEL", "parts.XR_HAND.threshold is missing"),
        ("tta", 3, "tta must be a non-empty text or null, got 3"),
    ],
)
def test_every_bad_field_of_an_ensemble_file_is_one_line_naming_it_exit_2_nothing_written(
    tree, runs, tmp_path, capsys, where, value, message
):
    data = _break(hand_made(runs).to_dict(), where, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them
    out = tmp_path / "out"
    assert _score_fitted(tree, runs, out, path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err, err
    assert not out.exists()


def test_the_tables_used_kappa_is_the_kappa_of_the_out_of_fold_predictions_and_of_score_where_nothing_is_fitted(
    tree, runs, tmp_path, capsys
):
    from sklearn.metrics import log_loss

    from mura_ens.fitting.summary import summary_rows

    first = tmp_path / "first"
    score(tree, models_dir=runs, out=first, settings=ScoreSettings(batch_size=4, bootstrap=BOOT), progress=False)
    path, oof_path = tmp_path / "ensemble.json", tmp_path / "oof.csv"
    command = ["fit-ensemble", str(first), "--out", str(path), "--oof", str(oof_path), "--min-studies", "2"]
    assert main([*command, "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    fitted = FittedEnsemble.load(path)
    assert (fitted.precision, fitted.tta) == ("fp32", "none")
    oof = read_studies_csv(oof_path)
    rows = {row["part"]: row for row in summary_rows(fitted)}
    checked = 0
    for part, model in fitted.parts.items():
        mine = oof[oof["body_part"] == part]
        y, pred = mine["label"].astype(int), mine["pred"].astype(int)
        used = model.info["quality"]["used_cv"]
        if len(set(y)) == 2:
            assert used["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12), part
            assert f"-> {used['kappa']:.3f}" in rows[part]["kappa plain -> used"]
            assert used["log_loss"] == pytest.approx(log_loss(y, mine["prob"].clip(1e-6, 1 - 1e-6)), abs=1e-9)
            checked += 1
        assert part in printed
    assert checked >= 2, fitted.parts
    # where nothing is fitted, the out-of-fold predictions are what `score --ensemble fitted` predicts
    again = tmp_path / "again"
    with pytest.warns(FittingOverlapWarning):
        settings = ScoreSettings(ensemble="fitted", ensemble_file=path, batch_size=4, bootstrap=BOOT)
        score(tree, models_dir=runs, out=again, settings=settings, progress=False)
    scored = read_studies(again).set_index("study")
    plain_parts = [p for p, m in fitted.parts.items() if m.status == "plain_mean" and m.calibrator.method == "none"]
    for part in plain_parts:
        mine = oof[oof["body_part"] == part].set_index("study")
        assert list(mine["pred"]) == list(scored.loc[mine.index, "pred"].astype(int)), part
        assert np.allclose(mine["prob"], scored.loc[mine.index, "prob"], rtol=0, atol=1e-12), part
    assert plain_parts, {p: m.status for p, m in fitted.parts.items()}


def read_studies_csv(path):
    import pandas as pd

    return pd.read_csv(path, dtype={"study": "string", "body_part": "string"})
