"""``--init-from RUN_DIR``: specialists warm-started from a generalist (refusals without TF; weights and kappa with TF)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.training.data import load_training_data
from mura_ens.training.options import TrainOptions
from mura_ens.training.warm_start import WARM_START_LR_FACTOR, read_source

TINY = {"cells": 2, "starting_filters": 4}


def _fake_run(
    folder: Path, *, plugin: str = "custom_cnn", size: int = 32, card: bool = True, best: bool = True
) -> Path:
    """A run folder as training leaves it, without TensorFlow: card.json (optional) and a stand-in best.keras."""
    folder.mkdir(parents=True)
    if best:
        (folder / "best.keras").write_bytes(b"not read by the checks")
    if card:
        record = {
            "model_name": folder.name,
            "plugin": plugin,
            "builder": plugin,
            "input_size": size,
            "config": {"image_size": size, "lr": 0.002, "params": {"cells": 2}},
        }
        (folder / "card.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


def _train_cli(synth_small, tmp_path, run: Path, *extra: str) -> list[str]:
    root = synth_small["root"]
    out = str(tmp_path / "out")
    base = ["train", "--plugin", "specialists", "--data", root, "--out", out, "--init-from", str(run)]
    return [*base, *extra]


# --------------------------------------------------------------------------- no TensorFlow


def test_init_from_option_is_stored_absolute_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainOptions(init_from="runs/cnn").init_from == str(tmp_path / "runs" / "cnn")
    assert TrainOptions().init_from is None
    for bad in ("", "  ", 3):
        with pytest.raises(UsageError, match="init-from must be a folder path"):
            TrainOptions(init_from=bad)
    # lr: None means the default, or the warm start's fine-tuning rate
    options = TrainOptions()
    assert options.lr is None and options.run_config(image_size=32, weights=None).lr == 1e-3
    assert options.run_config(image_size=32, weights=None, default_lr=2e-4).lr == 2e-4
    assert TrainOptions(lr=0.01).run_config(image_size=32, weights=None, default_lr=2e-4).lr == 0.01


def test_source_run_is_read_from_its_card(tmp_path):
    run = _fake_run(tmp_path / "cnn", size=48)
    source = read_source(run)
    assert (source.plugin, source.input_size, source.model_name, dict(source.params)) == (
        "custom_cnn",
        48,
        "cnn",
        {"cells": 2},
    )
    assert source.fine_tune_lr(None) == pytest.approx(WARM_START_LR_FACTOR * 0.002)
    assert source.fine_tune_lr(0.05) == 0.05
    assert source.weights_sha256 == hashlib.sha256(b"not read by the checks").hexdigest()
    assert source.model_sha256 is None  # no model.onnx in this fake run
    assert source.hyper_overrides({"dropout": 0.1, "base": "custom_cnn"}) == {"cells": 2, "dropout": 0.1}


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (
            lambda p: _fake_run(p, card=False),
            (),
            "not a finished run (no card.json)",
        ),
        (lambda p: _fake_run(p, best=False), (), "the run has no best.keras"),
        (lambda p: p, (), "no such run folder"),
        (
            lambda p: _fake_run(p, plugin="resnet50", size=32),
            ("--image-size", "32"),
            "that run is a resnet50 model at 32 px, this one builds custom_cnn at 32 px; "
            "warm-starting needs the same (base) plugin and input size",
        ),
        (
            lambda p: _fake_run(p, size=64),
            ("--image-size", "32"),
            "that run is a custom_cnn model at 64 px, this one builds custom_cnn at 32 px",
        ),
        (lambda p: _fake_run(p), ("--weights", "none"), "--weights and --init-from both choose the starting weights"),
    ],
    ids=["unfinished", "no-best-keras", "missing", "other-plugin", "other-input-size", "with-weights"],
)
def test_unusable_init_from_is_one_line_exit_2(synth_small, tmp_path, capsys, make, extra, message):
    run = make(tmp_path / "gen")
    code = main(_train_cli(synth_small, tmp_path, run, *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("mura-ens: error: "), err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # refused before any run folder was made


# --------------------------------------------------------------------------- TensorFlow


def _two_part_manifest(synth_small, tmp_path) -> Path:
    frame = load_training_data(synth_small["root"]).frame
    two_parts = frame.loc[frame["body_part"].isin(["XR_HAND", "XR_WRIST"])].drop(columns="fold")
    manifest = tmp_path / "two_parts.csv"
    two_parts.to_csv(manifest, index=False)
    return manifest


@pytest.mark.tf
@pytest.mark.slow
def test_specialists_start_from_the_generalist_weights(synth_small, tmp_path, monkeypatch):
    from mura_ens.training import train, trainer
    from mura_ens.training.export import load_best_model

    manifest = _two_part_manifest(synth_small, tmp_path)
    options = TrainOptions(epochs=1, batch_size=8, image_size=32, params=TINY, progress=False, val_fraction=0.4)
    (generalist,) = train("custom_cnn", manifest, tmp_path / "runs", options)

    at_start: dict[str, list[np.ndarray]] = {}
    build = trainer._build_compiled

    def spy(plan, job, *args, **kwargs):  # the model as fit() gets it: built, compiled, weights loaded (step 0)
        model = build(plan, job, *args, **kwargs)
        at_start[plan.name] = [w.copy() for w in model.get_weights()]
        return model

    monkeypatch.setattr(trainer, "_build_compiled", spy)
    # No --image-size, no --param: both come from the generalist's run (the plugin's default would be 256 px).
    warm = replace(options, image_size=None, params={}, init_from=generalist)
    runs = train("specialists", manifest, tmp_path / "runs", warm)
    stem = "specialists-custom_cnn-32-f4-c2-e1-bs8-vf0.4-init-wc-aug"  # the generalist's size and params
    assert [run.name for run in runs] == [f"{stem}-XR_HAND", f"{stem}-XR_WRIST"]

    source = load_best_model(generalist / "best.keras").get_weights()
    generalist_card = json.loads((generalist / "card.json").read_text())
    for run in runs:
        start = at_start[run.name]
        assert len(start) == len(source)
        assert all(np.array_equal(a, b) for a, b in zip(start, source, strict=True))
        finished = load_best_model(run / "best.keras").get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(finished, source, strict=True))  # it was fine-tuned
        card = json.loads((run / "card.json").read_text())
        assert card["config"]["init_from"] == str(generalist)
        assert card["config"]["lr"] == pytest.approx(WARM_START_LR_FACTOR * 1e-3)
        assert card["config"]["params"] == generalist_card["config"]["params"]
        assert card["input_size"] == 32
        record = card["init_from"]
        assert record["run_dir"] == str(generalist) and record["model_name"] == generalist_card["model_name"]
        assert record["model_sha256"] == hashlib.sha256((generalist / "model.onnx").read_bytes()).hexdigest()
        assert record["weights_sha256"] == hashlib.sha256((generalist / "best.keras").read_bytes()).hexdigest()
        assert record["lr_rule"].startswith(f"{WARM_START_LR_FACTOR:g} x the source run's lr")

    # --lr wins over the fine-tuning default; a --param that changes the architecture is refused in one line.
    (one,) = train("specialists", manifest, tmp_path / "lr", replace(warm, lr=3e-3, body_part="XR_HAND"))
    card = json.loads((one / "card.json").read_text())
    assert card["config"]["lr"] == 3e-3 and card["init_from"]["lr_rule"] == "--lr"
    with pytest.raises(UsageError, match="its weights do not fit the model built here") as info:
        train("specialists", manifest, tmp_path / "bad", replace(warm, params={"cells": 3}, body_part="XR_HAND"))
    assert "\n" not in str(info.value)


@pytest.mark.tf
@pytest.mark.slow
def test_warm_started_specialist_is_at_least_as_good_as_one_from_scratch(tmp_path):
    """Seeded synthetic MURA: on its own part's test studies, the warm specialist's kappa >= the scratch one's.

    Both are the same specialist (same part, architecture, epochs, seed); one starts from random
    weights with the default lr, the other from the generalist with 0.1 x its lr. The scratch
    specialist here has about 40 training studies and predicts mostly one class, which is what the
    real per-part models of the seed study did; the warm one must also have learned both classes.
    """
    from mura_ens.data.synth import make_synthetic_mura
    from mura_ens.training import train

    synth = make_synthetic_mura(tmp_path / "synth", studies_per_part=60, size=64, seed=5, difficulty="easy")
    common = TrainOptions(
        image_size=48, batch_size=16, seed=1, progress=False, params={"cells": 3, "starting_filters": 8}, patience=4
    )
    (generalist,) = train("custom_cnn", synth["root"], tmp_path / "runs", replace(common, epochs=20))
    part = "XR_WRIST"
    specialist = replace(common, epochs=15, body_part=part)
    (scratch,) = train("specialists", synth["root"], tmp_path / "scratch", specialist)
    (warm,) = train(
        "specialists", synth["root"], tmp_path / "warm", replace(specialist, init_from=generalist, params={})
    )

    def study_kappa(run: Path) -> float:
        evaluation = json.loads((run / "evaluation.json").read_text())
        assert evaluation["split"] == "test" and evaluation["study"]["overall"]["n"] >= 10
        return evaluation["study"]["overall"]["kappa"]

    assert study_kappa(warm) >= study_kappa(scratch), (study_kappa(warm), study_kappa(scratch))
    assert study_kappa(warm) > 0.2
