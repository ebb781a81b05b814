"""The fitted ensemble (mura_ens.fitting and `mura-ens fit-ensemble`): no TensorFlow, synthetic studies and tiny ONNX models.

Synthetic members follow a binormal model: a study's latent score is
``s = (2y - 1) * d / 2 + N(0, 1)``, and a *calibrated* member reports the true
posterior ``sigmoid(d * s + logit(prior))``. Fitting sets and the separate
sets that judge them are drawn with different seeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.fitting import FitSettings, FittedEnsemble, Member, fit_ensemble
from mura_ens.fitting.calibration import Calibrator, fit_calibrator
from mura_ens.fitting.thresholds import best_threshold
from mura_ens.fitting.weights import fit_weights, pool

PRIOR = 0.4
D = 1.5
SEVEN = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")


def latent(rng: np.random.Generator, y: np.ndarray, d: float = D) -> np.ndarray:
    return (2 * y - 1) * d / 2 + rng.normal(size=len(y))


def calibrated(s: np.ndarray, d: float = D) -> np.ndarray:
    return expit(d * s + logit(PRIOR))


def studies_frame(
    rng: np.random.Generator, parts: dict[str, int], members, *, prefix: str = "fit", patients_per_study: float = 1.0
) -> pd.DataFrame:
    """A studies.csv-like table: ``members`` maps name -> function(y, rng, part) -> probabilities (NaN = not scored)."""
    frames = []
    for part, n in parts.items():
        y = (rng.random(n) < PRIOR).astype(int)
        frame = pd.DataFrame(
            {
                "study": [f"{prefix}/{part}/patient{i:05d}/study1" for i in range(n)],
                "patient": [f"{prefix}{part}{int(i * patients_per_study):05d}" for i in range(n)],
                "body_part": part,
                "label": pd.array(y, dtype="Int64"),
            }
        )
        for name, make in members.items():
            frame[f"prob__{name}"] = make(y, rng, part)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["status"] = "ok"
    return out


def member_list(*names: str) -> list[Member]:
    return [Member(name, f"{i:064x}") for i, name in enumerate(names, start=1)]


def good(y, rng, part):
    return calibrated(latent(rng, y))


def noise(y, rng, part):
    return rng.random(len(y))


def constant(y, rng, part):
    return np.full(len(y), 0.5)


def miscalibrated(y, rng, part):
    """Overconfident and shifted: logit scaled by 2.5 and moved by +1."""
    return expit(2.5 * (D * latent(rng, y) + logit(PRIOR)) + 1.0)


def overall_auc(frame: pd.DataFrame, prob: np.ndarray) -> float:
    return roc_auc_score(frame["label"].astype(int), prob)


# ---- weights -------------------------------------------------------------------------------------


def test_planted_useless_members_get_no_weight_and_the_fit_matches_the_informative_model():
    members = {"good": good, "noise": noise, "const": constant}
    # the pooled fit's member selection drops a useless member outright (its log-loss weight alone is noise)
    parts = {"XR_HAND": 600, "XR_WRIST": 600}
    fitted = fit_ensemble(studies_frame(np.random.default_rng(1), parts, members), member_list(*members))
    for part, model in fitted.parts.items():
        assert model.uses_weights, (part, model.notes)
        assert model.weights["noise"] <= 0.05, (part, model.weights)
        assert model.weights["const"] <= 0.05, (part, model.weights)
        assert sum(model.weights.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(model.weights.values()) >= 0
    test = studies_frame(np.random.default_rng(2), {p: 3000 for p in parts}, members, prefix="test")
    prob, _ = fitted.apply(test)
    assert overall_auc(test, prob) >= overall_auc(test, test["prob__good"].to_numpy()) - 0.005
    plain = test[["prob__good", "prob__noise", "prob__const"]].mean(axis=1).to_numpy()
    assert overall_auc(test, prob) > overall_auc(test, plain) + 0.01  # the plain mean really is hurt


def test_two_informative_members_with_independent_noise_beat_each_member():
    members = {"a": good, "b": good}
    parts = {"XR_HAND": 400, "XR_SHOULDER": 400}
    fitted = fit_ensemble(studies_frame(np.random.default_rng(3), parts, members), member_list("a", "b"))
    test = studies_frame(np.random.default_rng(4), {p: 4000 for p in parts}, members, prefix="test")
    prob, _ = fitted.apply(test)
    auc = overall_auc(test, prob)
    for name in members:
        assert auc > overall_auc(test, test[f"prob__{name}"].to_numpy()) + 0.01, name
    for model in fitted.parts.values():
        assert 0.3 < model.weights["a"] < 0.7


def _log_loss(y, p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))


def test_fit_weights_finds_the_log_loss_optimum_on_the_simplex():
    rng = np.random.default_rng(5)
    y = (rng.random(500) < PRIOR).astype(int)
    P = np.column_stack([good(y, rng, ""), good(y, rng, ""), noise(y, rng, "")])
    w = fit_weights(P, y)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
    grid = [np.array([a, b, 1 - a - b]) for a in np.linspace(0, 1, 41) for b in np.linspace(0, 1, 41) if a + b <= 1]
    assert _log_loss(y, P @ w) <= min(_log_loss(y, P @ v) for v in grid) + 1e-9


@pytest.mark.parametrize("useless", [noise, constant])
def test_a_useless_member_gets_no_calibration_role(useless):
    """Mixing 0.5s into an overconfident member lowers log loss; fit_weights leaves that to the base-rate pseudo-member."""
    rng = np.random.default_rng(51)
    y = (rng.random(2000) < PRIOR).astype(int)
    P = np.column_stack([miscalibrated(y, rng, ""), useless(y, rng, "")])
    naive = min(np.linspace(0, 1, 101), key=lambda u: _log_loss(y, P @ np.array([1 - u, u])))
    assert naive > 0.1  # a plain log-loss fit would give the useless member real weight
    assert fit_weights(P, y)[1] <= 0.02


def test_part_weights_are_the_pooled_prior_moved_toward_the_part_by_its_empirical_bayes_factor():
    members = {"good": good, "noise": noise}
    frame = studies_frame(np.random.default_rng(6), {p: 40 for p in SEVEN}, members)
    fitted = fit_ensemble(frame, member_list(*members))
    for part, model in fitted.parts.items():
        info = model.info
        prior, own, lam = info["weights_prior"], info["weights_own"], info["shrink"]
        assert 0 <= lam <= 40 / 50  # capped by n / (n + K)
        if info["weights_source"] == "part":
            total = sum(lam * own[n] + (1 - lam) * prior[n] for n in members)
            expected = {n: (lam * own[n] + (1 - lam) * prior[n]) / total for n in members}
        elif info["weights_source"] == "pooled":
            expected = prior
        else:
            expected = {n: 0.5 for n in members}
        assert model.weights == pytest.approx(expected, abs=1e-12), part
    pooling = fitted.global_info["pooling"]
    assert pooling["member_roles"] == {"good": "good", "noise": "noise"}
    assert pooling["weights"]["noise"] == 0.0 and pooling["guard"]["kept"] is True


# ---- thresholds ----------------------------------------------------------------------------------

HAND_Y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
HAND_Q = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.45, 0.7])


def test_threshold_rules_on_hand_made_data():
    # kappa: t = 0.65 -> TP 1, FP 0, TN 6, FN 1: kappa 0.6 (t = 0.425 gives 0.5)
    assert best_threshold(HAND_Y, HAND_Q, "kappa") == pytest.approx(0.65)
    # Youden: t = 0.425 -> sens 1, spec 4/6: J 0.667 (t = 0.65 gives 0.5)
    assert best_threshold(HAND_Y, HAND_Q, "youden") == pytest.approx(0.425)
    assert cohen_kappa_score(HAND_Y, HAND_Q > 0.65) == pytest.approx(0.6)
    # perfectly separable: the midpoint between the classes
    assert best_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.35, 0.9]), "kappa") == pytest.approx(0.325)
    # undefined: one class, or one distinct value
    assert best_threshold(np.array([1, 1]), np.array([0.2, 0.8]), "kappa") is None
    assert best_threshold(np.array([0, 1]), np.array([0.5, 0.5]), "youden") is None


@pytest.mark.parametrize("rule", ["kappa", "youden"])
def test_best_threshold_reaches_the_brute_force_maximum(rule):
    rng = np.random.default_rng(7)
    y = (rng.random(120) < 0.3).astype(int)
    q = np.round(calibrated(latent(rng, y)), 2)  # ties on purpose

    def score(t):
        pred = q > t
        if rule == "kappa":
            return cohen_kappa_score(y, pred)
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    values = np.unique(q)
    best = max(score(t) for t in (values[:-1] + values[1:]) / 2)
    assert score(best_threshold(y, q, rule)) == pytest.approx(best, abs=1e-12)


def test_fixed_rule_puts_the_same_threshold_everywhere_and_pred_is_strictly_greater():
    members = {"good": good}
    frame = studies_frame(np.random.default_rng(8), {"XR_HAND": 50, "XR_ELBOW": 50}, members)
    fitted = fit_ensemble(frame, member_list("good"), FitSettings(threshold_rule="fixed", threshold=0.3))
    assert fitted.global_threshold == 0.3
    assert {m.threshold for m in fitted.parts.values()} == {0.3}
    probe = pd.DataFrame({"body_part": ["XR_HAND", "XR_HAND"], "prob__good": [0.3, 0.3000001]})
    _, pred = fitted.apply(probe)
    assert pred.tolist() == [0, 1]


def test_part_thresholds_shrink_toward_the_global_one_by_n_over_n_plus_k():
    # a member shifted far from 0.5, on enough studies that the guard keeps the thresholds (a calibrated member
    # on 30-60 studies gains too little over 0.5 to pass the paired bootstrap)
    members = {"shifted": shifted}
    frame = studies_frame(np.random.default_rng(9), {"XR_HAND": 100, "XR_ELBOW": 200}, members)
    fitted = fit_ensemble(frame, member_list("shifted"), FitSettings(threshold_shrinkage=40))
    assert fitted.global_info["guard"]["kept"] is True
    for part, model in fitted.parts.items():
        raw = model.info["threshold_fitted"]
        lam = model.n_studies / (model.n_studies + 40)
        assert model.info["guard"]["threshold"]["kept"] is True, part
        assert raw == best_threshold(*_part_arrays(frame, part, fitted), "kappa")
        assert model.threshold == pytest.approx(lam * raw + (1 - lam) * fitted.global_threshold, abs=1e-15)
        assert model.info["threshold_shrink"] == pytest.approx(lam)


def _part_arrays(frame, part, fitted):
    rows = frame[frame["body_part"] == part]
    prob, _ = fitted.apply(rows)
    return rows["label"].astype(int).to_numpy(), prob


def test_auto_threshold_shrinkage_never_trusts_a_part_more_than_its_weights():
    members = {"good": good, "noise": noise}
    frame = studies_frame(np.random.default_rng(10), {"XR_HAND": 12, "XR_ELBOW": 15, "XR_WRIST": 40}, members)
    fitted = fit_ensemble(frame, member_list(*members))
    for model in fitted.parts.values():
        assert 0.0 <= model.info["threshold_shrink"] <= model.n_studies / (model.n_studies + 10) + 1e-12


# ---- calibration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_reduces_log_loss_and_brier_on_a_separate_set(method):
    members = {"m": miscalibrated}
    parts = {"XR_HAND": 500, "XR_FINGER": 500}
    fit = studies_frame(np.random.default_rng(11), parts, members)
    test = studies_frame(np.random.default_rng(12), {p: 3000 for p in parts}, members, prefix="test")
    y = test["label"].astype(int).to_numpy()
    raw = test["prob__m"].to_numpy()
    calibrated_prob, _ = fit_ensemble(fit, member_list("m"), FitSettings(calibrate=method)).apply(test)

    def log_loss(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))

    def brier(p):
        return np.mean((p - y) ** 2)

    assert log_loss(calibrated_prob) < log_loss(raw) - 0.05
    assert brier(calibrated_prob) < brier(raw) - 0.005
    none_prob, _ = fit_ensemble(fit, member_list("m"), FitSettings(calibrate="none")).apply(test)
    np.testing.assert_array_equal(none_prob, raw)  # one member, no calibration: the member itself


def test_calibrators_are_shrunk_toward_the_identity():
    rng = np.random.default_rng(13)
    y = (rng.random(400) < PRIOR).astype(int)
    p = miscalibrated(y, rng, "")
    full, half = fit_calibrator(p, y, "platt", 1.0), fit_calibrator(p, y, "platt", 0.5)
    assert half.a == pytest.approx(0.5 * full.a + 0.5) and half.b == pytest.approx(0.5 * full.b)
    iso_full, iso_half = fit_calibrator(p, y, "isotonic", 1.0), fit_calibrator(p, y, "isotonic", 0.5)
    grid = np.linspace(0, 1, 101)
    np.testing.assert_allclose(iso_half.apply(grid), 0.5 * iso_full.apply(grid) + 0.5 * grid, atol=1e-12)
    assert np.all(np.diff(iso_half.apply(grid)) > 0)  # strictly increasing once shrunk
    assert fit_calibrator(p, np.ones_like(y), "platt", 1.0) == Calibrator()  # one class: identity


def test_calibrators_never_reverse_the_ranking():
    rng = np.random.default_rng(131)
    y = (rng.random(300) < PRIOR).astype(int)
    p = 1 - good(y, rng, "")  # anti-informative
    platt = fit_calibrator(p, y, "platt", 1.0)
    assert platt.a == 0.0 and platt.b == pytest.approx(logit((y.sum() + 1) / (len(y) + 2)), abs=0.05)
    grid = np.linspace(0.001, 0.999, 200)
    for method in ("platt", "isotonic"):
        assert np.all(np.diff(fit_calibrator(p, y, method, 0.7).apply(grid)) >= 0), method


# ---- parts that keep the plain mean --------------------------------------------------------------


def test_one_class_and_tiny_parts_get_the_pooled_weights_and_the_global_threshold_with_a_note():
    rng = np.random.default_rng(14)
    members = {"good": good, "noise": noise}
    frame = studies_frame(rng, {"XR_HAND": 80, "XR_HUMERUS": 60, "XR_FOREARM": 6}, members)
    frame = frame[(frame["body_part"] != "XR_HUMERUS") | (frame["label"] == 1)]  # its abnormal studies only
    n_humerus = int((frame["body_part"] == "XR_HUMERUS").sum())
    fitted = fit_ensemble(frame, member_list(*members), FitSettings(calibrate="platt"))
    assert fitted.global_info["pooling"]["guard"]["kept"] is True
    assert fitted.parts["XR_HAND"].uses_weights
    humerus, forearm = fitted.parts["XR_HUMERUS"], fitted.parts["XR_FOREARM"]
    assert humerus.status == forearm.status == "weights_only"
    assert "one class" in humerus.notes[0] and f"all {n_humerus} studies abnormal" in humerus.notes[0]
    assert "6 labelled studies < --min-studies 10" in forearm.notes[0] and "pooled weights" in forearm.notes[0]
    pooled = fitted.global_info["pooling"]["weights"]
    assert pooled["noise"] < 0.25 < pooled["good"]
    for model in (humerus, forearm):
        assert model.weights == pytest.approx(pooled, abs=1e-12)  # the pooled estimate (2 generalists)
        assert model.threshold == fitted.global_threshold
        assert model.calibrator == Calibrator()
    rows = frame[frame["body_part"] == "XR_HUMERUS"]
    prob, pred = fitted.apply(rows)
    expected = pooled["good"] * rows["prob__good"] + pooled["noise"] * rows["prob__noise"]
    np.testing.assert_allclose(prob, expected.to_numpy(), rtol=1e-12)
    assert pred.tolist() == [int(p > fitted.global_threshold) for p in prob]
    # pooled weights that do not beat the plain mean (two alike members, 8 studies): the plain mean, global calibrator
    alike = {"a": good, "b": good}
    tiny = studies_frame(np.random.default_rng(3), {"XR_HAND": 4, "XR_WRIST": 4}, alike)
    small = fit_ensemble(tiny, member_list(*alike), FitSettings(calibrate="platt"))
    assert small.global_info["pooling"]["guard"]["kept"] is False
    for model in small.parts.values():
        assert model.status == "plain_mean" and model.weights == {"a": 0.5, "b": 0.5}
        assert model.calibrator == small.global_calibrator


def test_cross_validated_quality_is_recorded_per_part():
    members = {"good": good, "noise": noise}
    frame = studies_frame(np.random.default_rng(15), {"XR_HAND": 200}, members, patients_per_study=0.5)
    model = fit_ensemble(frame, member_list(*members)).parts["XR_HAND"]
    quality = model.info["quality"]
    assert quality["folds"] == 5
    for key in ("plain", "used_cv"):
        assert set(quality[key]) >= {"n", "log_loss", "auc", "kappa", "brier"}
        assert quality[key]["n"] == 200
    assert set(quality["members"]) == {"good", "noise"}
    # the noise member drags the plain mean down; the cross-validated fit does better
    assert quality["used_cv"]["log_loss"] < quality["plain"]["log_loss"]
    assert quality["used_cv"]["auc"] > quality["plain"]["auc"]
    assert quality["members"]["noise"]["auc"] == pytest.approx(0.5, abs=0.1)


# ---- apply: exact arithmetic, fallbacks, JSON round trip -----------------------------------------


def _mixed_fit(calibrate: str) -> tuple[FittedEnsemble, pd.DataFrame]:
    """Generalists g1, g2 everywhere; specialist s_hand scores XR_HAND only."""

    def hand_only(y, rng, part):
        return good(y, rng, part) if part == "XR_HAND" else np.full(len(y), np.nan)

    members = {"g1": good, "g2": miscalibrated, "s_hand": hand_only}
    fit = studies_frame(np.random.default_rng(16), {"XR_HAND": 120, "XR_ELBOW": 120}, members)
    fitted = fit_ensemble(fit, member_list(*members), FitSettings(calibrate=calibrate))
    score = studies_frame(
        np.random.default_rng(17), {"XR_HAND": 20, "XR_ELBOW": 20, "XR_WRIST": 5}, members, prefix="s"
    )
    score.loc[0, "prob__s_hand"] = np.nan  # a hand study the specialist could not score
    score.loc[1, ["prob__g1", "prob__g2", "prob__s_hand"]] = np.nan  # nothing scored
    score.loc[len(score) - 1, "body_part"] = ""  # unknown body part
    return fitted, score


def test_apply_on_a_hand_built_ensemble():
    data = {
        "format": "mura-ens/fitted-ensemble",
        "format_version": 1,
        "mura_ens_version": "0.1.0",
        "settings": FitSettings().to_dict(),
        "members": [{"name": n, "sha256": n * 64} for n in "abc"],
        "global": {"calibrator": {"method": "none"}, "threshold": 0.2},
        "parts": {
            "XR_HAND": {
                "status": "fitted",
                "n_studies": 50,
                "n_positive": 20,
                "weights": {"a": 0.75, "b": 0.25},
                "calibrator": {"method": "platt", "a": 2.0, "b": 0.5},
                "threshold": 0.6,
            },
            "XR_ELBOW": {
                "status": "plain_mean",
                "n_studies": 5,
                "n_positive": 2,
                "weights": {"a": 0.5, "b": 0.5},
                "calibrator": {"method": "none"},
                "threshold": 0.2,
            },
        },
        "fitting": {"studies": ["s1", "s2"]},
    }
    fitted = FittedEnsemble.from_dict(data)
    frame = pd.DataFrame(
        {
            "body_part": ["XR_HAND", "XR_HAND", "XR_ELBOW", "", "XR_WRIST", "XR_HAND"],
            "prob__a": [0.8, np.nan, 0.1, 0.1, 0.3, np.nan],
            "prob__b": [0.4, 0.4, 0.4, np.nan, np.nan, np.nan],
            "prob__c": [np.nan, np.nan, np.nan, 0.3, np.nan, 0.9],
        }
    )
    prob, pred = fitted.apply(frame)
    hand = [expit(2.0 * logit(0.7) + 0.5), expit(2.0 * logit(0.4) + 0.5)]  # 0.75*0.8 + 0.25*0.4 = 0.7; b alone
    np.testing.assert_allclose(prob[:5], [*hand, 0.25, 0.2, 0.3], rtol=1e-14)
    assert np.isnan(prob[5])  # c serves no hand study in this ensemble: nothing to average
    assert pred.tolist() == [int(hand[0] > 0.6), int(hand[1] > 0.6), 1, 0, 1, pd.NA]
    assert fitted.thresholds(frame["body_part"]).tolist() == [0.6, 0.6, 0.2, 0.2, 0.2, 0.6]


@pytest.mark.parametrize("calibrate", ["none", "platt", "isotonic"])
def test_apply_is_the_documented_arithmetic(calibrate):
    fitted, score = _mixed_fit(calibrate)
    hand = fitted.parts["XR_HAND"]
    assert list(hand.weights) == ["g1", "g2", "s_hand"] and list(fitted.parts["XR_ELBOW"].weights) == ["g1", "g2"]
    prob, pred = fitted.apply(score)
    for i, row in score.iterrows():
        model = fitted.parts.get(row["body_part"])
        cols = list(model.weights) if model else ["g1", "g2", "s_hand"]
        values = np.array([row[f"prob__{c}"] for c in cols], dtype=float)
        present = ~np.isnan(values)
        if not present.any():
            assert np.isnan(prob[i]) and pred[i] is pd.NA
            continue
        if model is None:
            mean, calibrator, threshold = values[present].mean(), fitted.global_calibrator, fitted.global_threshold
        else:
            w = np.array([model.weights[c] for c in cols])[present]
            mean, calibrator, threshold = (w * values[present]).sum() / w.sum(), model.calibrator, model.threshold
        expected = _calibrate(calibrator, mean)
        assert prob[i] == pytest.approx(expected, rel=1e-12, abs=1e-15), (i, row["body_part"])
        assert pred[i] == int(prob[i] > threshold)
    np.testing.assert_array_equal(
        fitted.thresholds(score["body_part"]),
        [fitted.parts[p].threshold if p in fitted.parts else fitted.global_threshold for p in score["body_part"]],
    )


def _calibrate(calibrator: Calibrator, p: float) -> float:
    """The calibrators' formulas written out independently of the package."""
    if calibrator.method == "platt":
        z = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(p, 1e-6, 1 - 1e-6))
        return 1.0 / (1.0 + np.exp(-(calibrator.a * z + calibrator.b)))
    if calibrator.method == "isotonic":
        x, y = np.array(calibrator.x), np.array(calibrator.y)
        k = int(np.clip(np.searchsorted(x, p, side="right") - 1, 0, len(x) - 2))
        return y[k] + (y[k + 1] - y[k]) * (p - x[k]) / (x[k + 1] - x[k]) if x[k + 1] > x[k] else y[k + 1]
    return p


@pytest.mark.parametrize("calibrate", ["none", "platt", "isotonic"])
def test_json_round_trip_is_exact(calibrate, tmp_path):
    fitted, score = _mixed_fit(calibrate)
    path = fitted.save(tmp_path / "ensemble.json")
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON
    assert data["format"] == "mura-ens/fitted-ensemble" and data["settings"]["calibrate"] == calibrate
    again = FittedEnsemble.load(path)
    assert again == fitted
    assert again.to_json() == fitted.to_json() == path.read_text(encoding="utf-8")
    (p1, d1), (p2, d2) = fitted.apply(score), again.apply(score)
    np.testing.assert_array_equal(p1, p2)  # bit for bit, NaN in the same places
    assert d1.tolist() == d2.tolist()


def test_ensemble_json_records_members_fitting_set_and_versions():
    fitted, _ = _mixed_fit("platt")
    data = fitted.to_dict()
    assert [m["name"] for m in data["members"]] == ["g1", "g2", "s_hand"]
    assert all(len(m["sha256"]) == 64 for m in data["members"])
    fitting = data["fitting"]
    assert fitting["n_studies"] == 240 and fitting["by_body_part"]["XR_HAND"]["n_studies"] == 120
    assert len(fitting["studies"]) == 240 and len(fitting["sha256"]) == 64
    assert data["mura_ens_version"]
    assert data["precision"] is None and data["tta"] is None  # not given: unknown
    for part in ("XR_ELBOW", "XR_HAND"):
        guard = data["parts"][part]["guard"]["weights"]
        assert {"source", "kept", "plain", "fitted_cv", "lam"} <= set(guard)
        assert guard["source"] == data["parts"][part]["weights_source"] in ("plain", "pooled", "part")
        assert data["parts"][part]["status"] in ("fitted", "weights_only", "threshold_only", "plain_mean")
    pooling = data["global"]["pooling"]
    assert pooling["member_roles"] == {"g1": "g1", "g2": "g2", "s_hand": "specialists"}
    assert set(pooling) >= {"roles", "weights", "dropped", "guard", "tau2"}
    guard_keys = {"kept", "criterion", "plain", "fitted_cv", "gain", "share_positive", "resamples", "rule"}
    assert set(data["global"]["guard"]) == guard_keys
    # the hash depends on the labels, not only on the keys
    members = {"g1": good, "g2": miscalibrated}
    frame = studies_frame(np.random.default_rng(16), {"XR_HAND": 40}, members)
    flipped = frame.copy()
    flipped.loc[0, "label"] = 1 - flipped.loc[0, "label"]
    a = fit_ensemble(frame, member_list(*members)).fitting["sha256"]
    assert a != fit_ensemble(flipped, member_list(*members)).fitting["sha256"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "something else"}', "not a fitted ensemble"),
        ('{"format": "mura-ens/fitted-ensemble", "format_version": 99}', "format_version 99"),
        ('{"format": "mura-ens/fitted-ensemble", "format_version": 1}', "mura_ens_version is missing"),
    ],
)
def test_loading_a_bad_file_is_one_usage_error(tmp_path, text, message):
    path = tmp_path / "ensemble.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message) as info:
        FittedEnsemble.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ---- members and overlap -------------------------------------------------------------------------


def test_check_members_refuses_missing_changed_and_extra_models_in_one_line():
    fitted, _ = _mixed_fit("none")
    available = {m.name: m.sha256 for m in fitted.members}
    fitted.check_members(available)  # the same models: fine
    with pytest.raises(UsageError) as info:
        fitted.check_members({"g1": available["g1"], "g2": "f" * 64, "new_model": "e" * 64})
    text = str(info.value)
    assert "\n" not in text
    assert "missing s_hand" in text and "different sha256 for g2" in text and "not in the ensemble: new_model" in text
    fitted.check_members({**available, "new_model": "e" * 64}, allow_extra=True)


def test_overlap_counts_scored_studies_that_were_in_the_fitting_set():
    fitted, score = _mixed_fit("none")
    keys = list(fitted.fitting["studies"])
    assert fitted.overlap(score["study"]) == 0
    assert fitted.overlap([*keys[:7], *score["study"], keys[0]]) == 7


# ---- the fitting table ---------------------------------------------------------------------------


def test_bad_studies_tables_are_refused_with_one_line():
    members = {"good": good, "noise": noise}
    frame = studies_frame(np.random.default_rng(18), {"XR_HAND": 20}, members)
    cases = [
        (frame.drop(columns=["label"]), "lacks column.*label"),
        (frame.drop(columns=["prob__noise"]), "lacks column.*prob__noise"),
        (frame.assign(prob__extra=0.5), "not members: extra"),
        (frame.assign(label=frame["label"].astype(object).where(frame.index != 3, 2)), "labels must be 0 or 1"),
        (frame.assign(prob__good=frame["prob__good"].where(frame.index != 2, 1.5)), r"\[0, 1\], got 1.5"),
        (pd.concat([frame, frame.iloc[[0]]]), "repeated study"),
    ]
    for bad, message in cases:
        with pytest.raises(UsageError, match=message) as info:
            fit_ensemble(bad, member_list(*members))
        assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="unique"):
        fit_ensemble(frame, [Member("good", "a" * 64), Member("good", "b" * 64)])


def test_unlabelled_and_failed_studies_are_left_out_and_counted():
    members = {"good": good}
    frame = studies_frame(np.random.default_rng(19), {"XR_HAND": 40}, members)
    frame.loc[:4, "label"] = pd.NA
    frame.loc[5:6, "status"] = "all_images_failed"
    fitted = fit_ensemble(frame, member_list("good"))
    assert fitted.fitting["n_studies"] == 33
    assert any("5 studies unlabelled" in n for n in fitted.notes)
    assert any("2 studies not scored" in n for n in fitted.notes)
    assert fitted.overlap(frame["study"]) == 33


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calibrate": "sigmoid"}, "--calibrate must be one of none, platt, isotonic, got 'sigmoid'"),
        ({"threshold_rule": "f1"}, "--threshold-rule must be one of kappa, youden, fixed, got 'f1'"),
        ({"threshold": 1.5}, r"--threshold must be in \[0, 1\], got 1.5"),
        ({"shrinkage": -1}, "--shrinkage must be a finite number >= 0, got -1"),
        ({"threshold_shrinkage": float("inf")}, "--threshold-shrinkage must be a finite number >= 0, got inf"),
        ({"min_studies": 1}, "--min-studies must be an integer >= 2, got 1"),
        ({"cv_folds": 1}, "--folds must be an integer >= 2, got 1"),
        ({"seed": -3}, "--seed must be an integer >= 0, got -3"),
    ],
)
def test_settings_are_validated_with_one_line_that_repeats_the_value(kwargs, message):
    with pytest.raises(UsageError, match=message):
        FitSettings(**kwargs)


# ---- the CLI, on tiny ONNX models ----------------------------------------------------------------


def channel_model(path: Path, *, name: str, channel: int, a: float, b: float) -> Path:
    """A tiny ONNX model: sigmoid(a * mean(channel) / 255 + b), metadata as the scorer reads it."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])
    prob = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])
    nodes = [
        helper.make_node("Slice", ["image", "start", "end", "axis"], ["plane"]),
        helper.make_node("Flatten", ["plane"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inits = [
        helper.make_tensor("start", TensorProto.INT64, [1], [channel]),
        helper.make_tensor("end", TensorProto.INT64, [1], [channel + 1]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [a / 255.0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [b]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, name, [image], [prob], initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    props = {"plugin": "tiny_channel", "model_name": name, "body_parts": "", "input_size": "4"}
    helper.set_model_props(
        model, {**props, "resize_policy": "stretch", "threshold": "0.5", "mura_ens_version": "0.1.0"}
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_members(tmp_path_factory) -> Path:
    """good reads the red plane (label signal, calibrated), noise the blue plane (random), const nothing."""
    root = tmp_path_factory.mktemp("fit_models")
    slope = D / 30.0  # red = 128 + 30 * latent
    channel_model(root / "good" / "model.onnx", name="good", channel=0, a=255 * slope, b=-128 * slope + logit(PRIOR))
    channel_model(root / "noise" / "model.onnx", name="noise", channel=2, a=8.0, b=-4.0)
    channel_model(root / "const" / "model.onnx", name="const", channel=1, a=0.0, b=0.0)
    return root


def scored_with_onnx(models: Path, seed: int, parts: dict[str, int], prefix: str) -> pd.DataFrame:
    """A studies.csv as `score` writes it, each study one 4x4 image run through the ONNX models."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    frame = studies_frame(rng, parts, {}, prefix=prefix)
    y = frame["label"].astype(int).to_numpy()
    images = np.empty((len(y), 4, 4, 3), dtype=np.float32)
    images[..., 0] = (128 + 30 * latent(rng, y))[:, None, None]
    images[..., 1] = 128
    images[..., 2] = rng.uniform(0, 255, size=(len(y), 4, 4))
    for name in ("const", "good", "noise"):
        session = ort.InferenceSession(str(models / name / "model.onnx"), providers=["CPUExecutionProvider"])
        frame[f"prob__{name}"] = session.run(None, {"image": images})[0][:, 0].astype(np.float64)
    frame.insert(3, "n_images", 1)
    frame.insert(4, "n_scored", 1)
    frame["prob"] = frame[["prob__const", "prob__good", "prob__noise"]].mean(axis=1)
    frame["pred"] = (frame["prob"] > 0.5).astype(int)
    return frame[[*frame.columns.drop("status"), "status"]]


@pytest.fixture(scope="module")
def scored_dir(onnx_members, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored")
    scored_with_onnx(onnx_members, 21, {"XR_HAND": 600, "XR_WRIST": 600}, "valid").to_csv(
        out / "studies.csv", index=False
    )
    (out / "metrics.json").write_text(json.dumps({"threshold": 0.5}), encoding="utf-8")
    write_models_json(out, onnx_members)
    return out


def write_models_json(folder: Path, models: Path, **how) -> None:
    """``models.json`` as ``score`` writes it for the models under ``models`` (``how``: precision, tta)."""
    from mura_ens.scoring.models import load_models

    records = [m.describe() for m in load_models(models)]
    how = {"precision": "fp32", "tta": "none", **how}
    (folder / "models.json").write_text(json.dumps({**how, "models": records}, default=str), encoding="utf-8")


def test_cli_fits_tiny_onnx_members_and_the_useless_ones_get_no_weight(onnx_members, scored_dir, tmp_path, capsys):
    out = tmp_path / "ensemble.json"
    assert main(["fit-ensemble", str(scored_dir), "--models", str(onnx_members), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "XR_HAND" in printed and "XR_WRIST" in printed and f"wrote {out}" in printed
    fitted = FittedEnsemble.load(out)
    for part in ("XR_HAND", "XR_WRIST"):
        weights = fitted.parts[part].weights
        assert weights["noise"] <= 0.05 and weights["const"] <= 0.05, (part, weights)
    from mura_ens.scoring.models import load_models

    fitted.check_members({m.name: m.sha256 for m in load_models(onnx_members)})
    test = scored_with_onnx(onnx_members, 22, {"XR_HAND": 2000, "XR_WRIST": 2000}, "test")
    prob, _ = fitted.apply(test)
    assert overall_auc(test, prob) >= overall_auc(test, test["prob__good"].to_numpy()) - 0.005
    assert fitted.overlap(test["study"]) == 0


def test_cli_reads_models_json_when_no_models_are_given(onnx_members, scored_dir, tmp_path):
    from mura_ens.scoring.models import load_models

    folder = tmp_path / "scored"
    folder.mkdir()
    (folder / "studies.csv").write_bytes((scored_dir / "studies.csv").read_bytes())
    records = [m.describe() for m in load_models(onnx_members)]
    (folder / "models.json").write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "e.json"
    assert main(["fit-ensemble", str(folder), "--out", str(out), "--calibrate", "isotonic"]) == 0
    members = json.loads(out.read_text(encoding="utf-8"))["members"]
    assert {m["name"]: m["sha256"] for m in members} == {r["name"]: r["sha256"] for r in records}


def test_cli_fits_from_studies_whose_keys_came_from_non_utf8_file_names(onnx_members, scored_dir, tmp_path):
    from mura_ens.io import atomic_write_csv

    folder = tmp_path / "scored"
    folder.mkdir()
    frame = pd.read_csv(scored_dir / "studies.csv", dtype={"study": "string", "patient": "string"})
    key = frame.loc[0, "study"].replace("study1", "study\udcff")  # a 0xFF byte kept by surrogateescape
    frame.loc[0, "study"] = key
    atomic_write_csv(folder / "studies.csv", frame)  # as `score` writes it
    (folder / "models.json").write_bytes((scored_dir / "models.json").read_bytes())
    assert b"study\xff" in (folder / "studies.csv").read_bytes()
    out = tmp_path / "e.json"
    assert main(["fit-ensemble", str(folder), "--models", str(onnx_members), "--out", str(out)]) == 0
    fitted = FittedEnsemble.load(out)
    assert fitted.fitting["n_studies"] == len(frame)
    assert fitted.overlap(pd.Series([key])) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "{models}", "--calibrate", "sigmoid"], "--calibrate must be one of"),
        (["--models", "{models}", "--threshold-shrinkage", "lots"], "--threshold-shrinkage must be auto or a number"),
        (["--models", "{models}", "--out", "{tmp}"], "--out must be a file"),
        (["--models", "{tmp}/nowhere"], "models folder not found"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(onnx_members, scored_dir, tmp_path, capsys, extra, message):
    args = [a.format(models=onnx_members, tmp=tmp_path) for a in extra]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "ensemble.json")]
    assert main(["fit-ensemble", str(scored_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ensemble.json").exists()


def test_cli_binds_the_members_to_models_json_and_models_only_cross_check(onnx_members, scored_dir, tmp_path, capsys):
    out = tmp_path / "e.json"
    # a model the folder was not scored with
    other = channel_model(tmp_path / "models" / "other" / "model.onnx", name="other", channel=0, a=1.0, b=0.0)
    assert main(["fit-ensemble", str(scored_dir), "--model", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model other" in err and "was not used to score" in err
    # a retrained model of the same name: its sha256 differs from what the folder was scored with
    retrained = channel_model(tmp_path / "retrained" / "good" / "model.onnx", name="good", channel=0, a=2.0, b=0.0)
    assert main(["fit-ensemble", str(scored_dir), "--model", str(retrained), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model good" in err and "differs from the one" in err and "sha256" in err
    # a models folder that lacks a member
    partial = tmp_path / "partial"
    channel_model(
        partial / "good" / "model.onnx", name="good", channel=0, a=255 * D / 30.0, b=-128 * D / 30.0 + logit(PRIOR)
    )
    assert main(["fit-ensemble", str(scored_dir), "--models", str(tmp_path / "retrained"), "--out", str(out)]) == 2
    assert "model good" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main(["fit-ensemble", str(missing), "--models", str(onnx_members), "--out", str(out)]) == 2
    assert f"scored folder not found: {missing}" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "studies.csv").write_bytes((scored_dir / "studies.csv").read_bytes())
    assert main(["fit-ensemble", str(bare), "--models", str(onnx_members), "--out", str(out)]) == 2
    assert "does not record the models it was scored with" in capsys.readouterr().err
    assert not out.exists()
    # the members come from models.json whatever --models holds; one matching model given is a valid cross-check
    small = tmp_path / "small"
    small.mkdir()
    pd.read_csv(scored_dir / "studies.csv").groupby("body_part").head(60).to_csv(small / "studies.csv", index=False)
    (small / "models.json").write_bytes((scored_dir / "models.json").read_bytes())
    good_only = onnx_members / "good" / "model.onnx"
    assert main(["fit-ensemble", str(small), "--model", str(good_only), "--out", str(out)]) == 0
    fitted = FittedEnsemble.load(out)
    assert [m.name for m in fitted.members] == ["const", "good", "noise"]
    assert (fitted.precision, fitted.tta) == ("fp32", "none")


# ---- pooling across parts (issue 22) -------------------------------------------------------------


def onnx_member_list(models: Path) -> list[Member]:
    from mura_ens.fitting import members_from_models
    from mura_ens.scoring.models import load_models

    return members_from_models(load_models(models))


@pytest.mark.parametrize("seed", [42])  # 10 more draws of the same set-up: docs/ensembles.md, "What pooling changed"
def test_a_planted_noise_member_gets_at_most_005_on_every_part_with_30_studies_per_part(onnx_members, seed):
    """good (informative), noise (uniform) and const, tiny ONNX graphs run on 30 studies of each of the 7 parts."""
    frame = scored_with_onnx(onnx_members, seed, dict.fromkeys(SEVEN, 30), "fit")
    fitted = fit_ensemble(frame, onnx_member_list(onnx_members))
    assert set(fitted.parts) == set(SEVEN)
    for part, model in fitted.parts.items():
        assert model.uses_weights, (part, model.notes)
        assert model.weights["noise"] <= 0.05 and model.weights["const"] <= 0.05, (part, model.weights, model.notes)


def test_with_5_studies_per_part_a_noise_member_never_gets_more_than_the_plain_mean_gives(onnx_members):
    members = onnx_member_list(onnx_members)
    for seed in range(50, 54):
        fitted = fit_ensemble(scored_with_onnx(onnx_members, seed, dict.fromkeys(SEVEN, 5), "few"), members)
        for part, model in fitted.parts.items():
            assert model.weights["noise"] <= 1 / 3 + 1e-12, (seed, part, model.weights)


def test_a_member_useless_on_one_part_only_keeps_its_weight_on_the_others():
    def useless_on_wrist(y, rng, part):
        return noise(y, rng, part) if part == "XR_WRIST" else good(y, rng, part)

    members = {"g1": good, "g2": useless_on_wrist}
    frame = studies_frame(np.random.default_rng(43), dict.fromkeys(SEVEN, 40), members)
    fitted = fit_ensemble(frame, member_list(*members))
    for part, model in fitted.parts.items():
        if part != "XR_WRIST":  # the pooled weights, or the plain mean when they do not beat it: ~ half each
            assert 0.3 <= model.weights["g2"] <= 0.7, (part, model.weights, model.notes)
    wrist = fitted.parts["XR_WRIST"]
    assert wrist.weights["g2"] < min(m.weights["g2"] for p, m in fitted.parts.items() if p != "XR_WRIST")


def test_fitting_imports_no_tensorflow():
    code = "import sys, mura_ens.fitting, mura_ens.cli.fit_ensemble; print(any(m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_pool_is_the_weighted_mean_over_present_members():
    P = np.array([[0.2, 0.6, 0.9], [np.nan, 0.6, 0.9], [0.2, np.nan, np.nan], [np.nan] * 3, [0.1, 0.3, np.nan]])
    w = np.array([0.5, 0.5, 0.0])
    out = pool(P, w)
    np.testing.assert_allclose(out[:3], [0.4, 0.6, 0.2], rtol=1e-15)
    assert np.isnan(out[3])
    assert out[4] == pytest.approx(0.2)
    np.testing.assert_allclose(pool(P[[1]], np.array([0.5, 0.0, 0.0])), [0.75])  # only 0-weight members present


# ---- the guard: a fitted part must beat the plain mean in patient-grouped CV ----------------------


def separable(y, rng, part):
    """0.5 already separates the classes perfectly: nothing a fitted threshold can win."""
    return np.where(y == 1, rng.uniform(0.55, 0.95, len(y)), rng.uniform(0.05, 0.45, len(y)))


def shifted(y, rng, part):
    """Informative but shifted up by 2.5 in logit: 0.5 calls far too many studies abnormal."""
    return expit(logit(calibrated(latent(rng, y, d=3.0), d=3.0)) + 2.5)


def test_a_part_whose_fitted_threshold_would_lose_in_cv_keeps_the_plain_mean_at_the_plain_threshold():
    members = {"a": separable, "b": separable}
    frame = studies_frame(np.random.default_rng(30), {"XR_HAND": 40, "XR_WRIST": 40}, members)
    fitted = fit_ensemble(frame, member_list(*members), FitSettings(plain_threshold=0.5))
    for part, model in fitted.parts.items():
        guard = model.info["guard"]
        assert guard["threshold"]["kept"] is False and guard["threshold"]["plain"] == 1.0, part
        assert model.threshold == 0.5 and model.info["threshold_fitted"] != 0.5
        assert any("Own threshold" in note and "not kept" in note for note in model.notes), model.notes
        prob, pred = fitted.apply(frame[frame["body_part"] == part])
        assert pred.tolist() == [int(p > 0.5) for p in prob]
    assert fitted.global_threshold == 0.5 and fitted.global_info["guard"]["kept"] is False


def test_a_part_with_a_clearly_better_fitted_ensemble_keeps_its_weights_and_threshold():
    members = {"shifted": shifted, "noise": noise}
    frame = studies_frame(np.random.default_rng(31), {"XR_HAND": 300, "XR_WRIST": 300}, members)
    fitted = fit_ensemble(frame, member_list(*members))
    for part, model in fitted.parts.items():
        guard = model.info["guard"]
        assert model.status == "fitted", (part, model.notes)
        assert guard["weights"]["kept"] is True and guard["threshold"]["kept"] is True, (part, guard)
        assert guard["threshold"]["fitted_cv"] > guard["threshold"]["plain"] + 0.1
        assert model.weights["noise"] < 0.1 and model.threshold > 0.6
        assert not any("not kept" in note for note in model.notes), model.notes
    test = studies_frame(np.random.default_rng(32), {"XR_HAND": 2000, "XR_WRIST": 2000}, members, prefix="t")
    y = test["label"].astype(int).to_numpy()
    _, pred = fitted.apply(test)
    plain = test[["prob__shifted", "prob__noise"]].mean(axis=1).to_numpy() > 0.5
    assert cohen_kappa_score(y, pred.astype(int)) > cohen_kappa_score(y, plain) + 0.1


def test_smooth_threshold_maximises_the_bootstrap_averaged_curve():
    from mura_ens.fitting.thresholds import smooth_threshold

    rng = np.random.default_rng(33)
    y = (rng.random(30) < 0.4).astype(int)
    q = calibrated(latent(rng, y))
    t = smooth_threshold(y, q, "kappa", n_boot=300, seed=5)
    draws = np.random.default_rng(5).multinomial(30, np.full(30, 1 / 30), size=300)
    order = np.argsort(q, kind="stable")
    ys, qs = y[order], q[order]

    def mean_kappa(threshold):
        values = []
        for counts in draws:
            idx = np.repeat(np.arange(30), counts)
            if len(np.unique(ys[idx])) == 2:
                values.append(cohen_kappa_score(ys[idx], (qs[idx] > threshold).astype(int)))
        return np.mean(values)

    candidates = (qs[1:] + qs[:-1]) / 2
    assert mean_kappa(t) == pytest.approx(max(mean_kappa(c) for c in candidates), abs=1e-9)
    assert smooth_threshold(np.array([1, 1]), np.array([0.2, 0.8]), "kappa") is None


def test_the_guards_reject_a_gain_of_one_study_on_twenty_and_keep_a_gain_of_four():
    from mura_ens.fitting.significance import CONFIDENCE, judge, patient_resamples
    from mura_ens.fitting.thresholds import resampled_rule_value, rule_value

    y = np.array([1] * 8 + [0] * 12)
    plain = y.copy()
    plain[[0, 1, 8, 9]] = 1 - plain[[0, 1, 8, 9]]  # two missed abnormal studies, two false alarms
    counts = patient_resamples(np.array([f"p{i}" for i in range(20)]), seed=0)
    verdicts = {}
    for fixed in (1, 4):
        fitted = plain.copy()
        fitted[[0, 8, 1, 9][:fixed]] = y[[0, 8, 1, 9][:fixed]]
        gain = rule_value(y, fitted, "kappa") - rule_value(y, plain, "kappa")
        resampled = resampled_rule_value(y, fitted, counts, "kappa") - resampled_rule_value(y, plain, counts, "kappa")
        verdicts[fixed] = judge(gain, resampled)
        assert gain > 0.09 * fixed, (fixed, gain)  # a real gain on the 20 studies either way
    # one study is absent from ~36% of resamples: its gain is noise; four corrected studies are not
    assert verdicts[1]["kept"] is False and 0.55 < verdicts[1]["share_positive"] < CONFIDENCE
    assert verdicts[4]["kept"] is True and verdicts[4]["share_positive"] >= 0.97
    # a patient's studies are resampled together: 20 studies of 2 patients give two-valued resamples
    two = patient_resamples(np.array(["a"] * 10 + ["b"] * 10), seed=0)
    assert set(np.unique(two[:, :10])) <= {0.0, 1.0, 2.0} and np.all(two[:, :10] == two[:, [0]])
