"""`mura-ens evaluate` on a scoring run's own files: beside its input, never onto it, and the same
metrics.json as `score` (image level, per-model and baseline sections), on tiny ONNX models."""

from __future__ import annotations

import json
import shutil

import pytest
from scoring_fixtures import ENSEMBLE_LAYOUT, make_tree
from test_scoring_fitted import hand_made

from mura_ens.cli.main import main
from mura_ens.metrics import BootstrapSettings
from mura_ens.scoring.score import ScoreSettings, score

BOOT = BootstrapSettings(n_resamples=30, seed=2)
SCORED = ("images.csv", "studies.csv", "models.json")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_models):
    """A body_part run and a fitted run of the same tree, and the fitted run's ensemble.json."""
    folder = tmp_path_factory.mktemp("evaluate_scored")
    tree = make_tree(folder / "tree", ENSEMBLE_LAYOUT, seed=5)
    runs = tiny_models["gen_a"].parents[1]
    plain = folder / "plain"
    score(tree, plain, models_dir=runs, settings=ScoreSettings(batch_size=4, bootstrap=BOOT), progress=False)
    ensemble_file = hand_made(runs).save(folder / "ensemble.json")
    fitted = folder / "fitted"
    settings = ScoreSettings(ensemble="fitted", ensemble_file=ensemble_file, batch_size=4, bootstrap=BOOT)
    score(tree, fitted, models_dir=runs, settings=settings, progress=False)
    return plain, fitted, ensemble_file


def _copy(source, target):
    target.mkdir()
    for name in SCORED:
        shutil.copy(source / name, target / name)
    return target


def _without_ensemble_facts(metrics: dict) -> dict:
    """What a predictions file cannot tell: the ensemble's name and file (the tables are the same)."""
    return {k: v for k, v in metrics.items() if k not in ("ensemble", "ensemble_file")}


def test_evaluate_writes_beside_its_input_the_metrics_score_wrote(scored, tmp_path, capsys):
    plain, _, _ = scored
    folder = _copy(plain, tmp_path / "copy")
    assert main(["evaluate", str(folder / "studies.csv"), "--bootstrap", "30", "--seed", "2"]) == 0
    assert f"wrote {folder / 'metrics.json'}" in capsys.readouterr().out
    got = json.loads((folder / "metrics.json").read_text())
    want = json.loads((plain / "metrics.json").read_text())
    assert {"study", "image", "models"} <= set(got)
    assert sorted(got["models"]) == ["gen_a", "gen_b", "spec_elbow_wrist", "spec_hand"]
    assert got["models"]["spec_hand"]["study"]["by_body_part"].keys() == {"XR_HAND"}
    assert _without_ensemble_facts(got) == _without_ensemble_facts(want)


def test_evaluate_with_the_ensemble_file_adds_the_plain_mean_baseline_as_score_does(scored, tmp_path):
    _, fitted, ensemble_file = scored
    folder = _copy(fitted, tmp_path / "copy")
    out = tmp_path / "elsewhere" / "m.json"
    args = ["evaluate", str(folder / "studies.csv"), "--ensemble-file", str(ensemble_file), "-o", str(out)]
    assert main([*args, "--bootstrap", "30", "--seed", "2"]) == 0
    assert not (folder / "metrics.json").exists()  # -o chooses
    got, want = json.loads(out.read_text()), json.loads((fitted / "metrics.json").read_text())
    assert "baselines" in got and got["ensemble_thresholds"] == want["ensemble_thresholds"]
    assert _without_ensemble_facts(got) == _without_ensemble_facts(want)


@pytest.mark.parametrize("target", ["studies.csv", "images.csv", "models.json"])
def test_evaluate_never_writes_onto_an_input(scored, tmp_path, capsys, target):
    plain, _, _ = scored
    folder = _copy(plain, tmp_path / "copy")
    before = (folder / target).read_bytes()
    assert main(["evaluate", str(folder / "studies.csv"), "-o", str(folder / target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an input of this command" in err[0]
    assert (folder / target).read_bytes() == before
