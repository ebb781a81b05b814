"""Training: folds and class weights (no TF), the input pipeline, learning on synthetic MURA, specialists, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from mura_ens.cli.main import main
from mura_ens.data.synth import make_synthetic_mura
from mura_ens.errors import UsageError
from mura_ens.training.class_weights import ONE_CLASS_WEIGHT, class_weight_table, sample_weights
from mura_ens.training.data import fold_counts, limit_images, load_training_data, manifest_sha256
from mura_ens.training.history import HISTORY_COLUMNS, read_history
from mura_ens.training.trainer import new_run_dir, resolve_weights

RUN_FILES = ("model.onnx", "card.json", "history.tsv", "evaluation.json", "curves.png", "best.keras")


# --------------------------------------------------------------------------- data side (no TensorFlow)


def test_class_weights_follow_the_mura_paper():
    train = pd.DataFrame(
        {
            "body_part": ["XR_HAND"] * 4 + ["XR_WRIST"] * 5 + ["XR_ELBOW"] * 2,
            "label": [1, 0, 0, 0] + [1, 1, 1, 0, 0] + [0, 0],
        }
    )
    table = class_weight_table(train)
    hand, wrist, elbow = table["XR_HAND"], table["XR_WRIST"], table["XR_ELBOW"]
    assert (hand["abnormal"], hand["normal"]) == (1, 3)
    assert hand["w_abnormal"] == pytest.approx(3 / 4) and hand["w_normal"] == pytest.approx(1 / 4)
    assert wrist["w_abnormal"] == pytest.approx(2 / 5) and wrist["w_normal"] == pytest.approx(3 / 5)
    assert elbow["w_abnormal"] == elbow["w_normal"] == ONE_CLASS_WEIGHT  # one class: not zeroed out
    rows = pd.DataFrame({"body_part": ["XR_HAND", "XR_HAND", "XR_WRIST", "XR_FINGER"], "label": [1, 0, 0, 1]})
    np.testing.assert_allclose(sample_weights(rows, table), [0.75, 0.25, 0.6, ONE_CLASS_WEIGHT])


def test_patients_never_cross_train_and_val(synth_small):
    data = load_training_data(synth_small["root"], val_fraction=0.3, seed=4)
    frame = data.frame
    train = set(frame.loc[frame["fold"] == "train", "patient"])
    val = set(frame.loc[frame["fold"] == "val", "patient"])
    assert train and val and not train & val
    # MURA's valid folder is the test fold, and only it
    assert set(frame.loc[frame["fold"] == "test", "split"]) == {"valid"}
    assert (frame.loc[frame["split"] == "valid", "fold"] == "test").all()
    limited = limit_images(frame, 10, seed=0)
    counts = fold_counts(limited)
    assert all(0 < c["images"] <= 10 or c["images"] == len(limited) for c in counts.values())
    # whole studies only: every kept study keeps all its images
    per_study = frame.groupby("study").size()
    kept = limited.groupby("study").size()
    assert (kept == per_study.loc[kept.index]).all()


def test_relabelled_study_uses_the_csv_label(synth_small):
    relabelled = synth_small["relabelled_study"]
    frame = load_training_data(synth_small["root"]).frame
    labels = frame.loc[frame["study"] == relabelled["study"], "label"]
    assert len(labels) and (labels == relabelled["csv_label"]).all()


def test_manifest_hash_ignores_row_order_and_location(synth_small):
    data = load_training_data(synth_small["root"])
    frame = data.frame.drop(columns="fold")
    moved = frame.sample(frac=1.0, random_state=1).copy()
    moved["path"] = ["/elsewhere/copy/" + p.split("MURA-v1.1/", 1)[1] for p in moved["path"]]
    assert manifest_sha256(moved) == manifest_sha256(frame)
    changed = frame.copy()
    changed.loc[changed.index[0], "label"] = 1 - changed["label"].iloc[0]
    assert manifest_sha256(changed) != manifest_sha256(frame)


def test_run_dirs_are_never_overwritten(tmp_path):
    first = new_run_dir(tmp_path, "cnn")
    (first / "card.json").write_text("{}")
    assert new_run_dir(tmp_path, "cnn").name == "cnn-2"
    with pytest.raises(UsageError, match="bad run name"):
        new_run_dir(tmp_path, "../x")


def test_weights_option(tmp_path):
    assert resolve_weights(None, default="none") is None
    assert resolve_weights("ImageNet") == "imagenet"
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x")
    assert resolve_weights(str(weights)) == str(weights)
    with pytest.raises(UsageError, match=r"--weights 'missing.h5': no such file .*imagenet or none"):
        resolve_weights("missing.h5")


# --------------------------------------------------------------------------- TensorFlow side


@pytest.mark.tf
def test_pipeline_drops_unloadable_images_and_augments(synth_small):
    from mura_ens.training.pipeline import LoadFailures, StreamSettings, augment_batch, training_dataset

    frame = load_training_data(synth_small["root"]).frame
    zero_byte = synth_small["quirk_files"]["zero_byte"]
    rows = pd.concat([frame.loc[frame["path"] == zero_byte], frame.loc[frame["path"] != zero_byte].head(5)])
    assert len(rows) == 6
    failures = LoadFailures()
    data = training_dataset(
        rows,
        np.ones(len(rows), np.float32),
        StreamSettings(image_size=32, resize_policy="stretch", batch_size=4, seed=0),
        failures=failures,
        shuffle=True,
        augment=True,
    )
    images = np.concatenate([batch[0].numpy() for batch in data])
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255
    assert failures.as_dict() == {zero_byte: "empty_file"}

    ramp = np.tile(np.arange(16, dtype=np.float32)[None, :, None], (16, 1, 3))[None].repeat(64, axis=0)
    augmented = augment_batch(ramp).numpy()
    assert augmented.shape == ramp.shape
    assert not np.allclose(augmented, ramp)
    # rotations fill with black, flips keep values: no value above the input's maximum
    assert augmented.max() <= 15 + 1e-3 and augmented.min() >= 0


@pytest.mark.tf
def test_kappa_metric_equals_sklearn():
    from mura_ens.training.keras_metrics import BinaryKappa

    rng = np.random.default_rng(1)
    for _ in range(3):
        y = rng.integers(0, 2, 200)
        p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
        metric = BinaryKappa()
        metric.update_state(y[:120].astype("float32"), p[:120].astype("float32"), sample_weight=np.full(120, 7.0))
        metric.update_state(y[120:].astype("float32"), p[120:].astype("float32"))
        assert float(metric.result()) == pytest.approx(cohen_kappa_score(y, (p > 0.5).astype(int)), abs=1e-6)


@pytest.mark.tf
@pytest.mark.slow
def test_custom_cnn_learns_synthetic_mura(tmp_path):
    """40 studies per part at 64 px: study-level kappa >= 0.5 on the synthetic test split (MURA valid)."""
    from mura_ens.training import train

    synth = make_synthetic_mura(tmp_path / "synth", studies_per_part=40, size=64, seed=2, difficulty="easy")
    # A lighter cell stack than the 256-px default (6 cells would shrink 64 px to 1x1).
    (run,) = train(
        "custom_cnn",
        synth["root"],
        tmp_path / "runs",
        epochs=30,
        patience=8,
        batch_size=16,
        image_size=64,
        seed=1,
        params={"cells": 5, "starting_filters": 16},
        progress=False,
    )
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["split"] == "test"
    study = evaluation["study"]["overall"]
    assert study["n"] == synth["totals"]["valid"]["studies"]
    assert study["kappa"] >= 0.5, study
    assert study["auc"] >= 0.8, study
    assert evaluation["image"]["overall"]["n"] > study["n"]
    card = json.loads((run / "card.json").read_text())
    assert card["onnx_max_abs_diff"] <= 1e-4
    assert card["training"]["best_epoch"] >= 1 and card["metrics"]["test"] == {
        k: v for k, v in evaluation.items() if k not in ("model_name", "split")
    }


@pytest.mark.tf
@pytest.mark.slow
def test_specialists_give_one_tagged_model_per_body_part(synth_small, tmp_path):
    from mura_ens.training import TrainOptions, train
    from mura_ens.training.export import read_onnx_metadata

    frame = load_training_data(synth_small["root"]).frame
    two_parts = frame.loc[frame["body_part"].isin(["XR_HAND", "XR_WRIST"])].drop(columns="fold")
    manifest = tmp_path / "two_parts.csv"
    two_parts.to_csv(manifest, index=False)

    options = TrainOptions(
        epochs=1,
        batch_size=8,
        image_size=32,
        params={"cells": 2, "starting_filters": 4},
        progress=False,
        val_fraction=0.4,
    )
    runs = train("specialists", manifest, tmp_path / "runs", options)
    stem = "specialists-custom_cnn-32-f4-c2-e1-bs8-vf0.4-wc-aug"  # named after the parameters, plus the part
    assert [run.name for run in runs] == [f"{stem}-XR_HAND", f"{stem}-XR_WRIST"]
    for run, part in zip(runs, ("XR_HAND", "XR_WRIST")):
        meta = read_onnx_metadata(run / "model.onnx")
        assert meta["body_parts"] == part and meta["plugin"] == "specialists" and meta["base_plugin"] == "custom_cnn"
        card = json.loads((run / "card.json").read_text())
        assert card["body_parts"] == [part] and card["onnx_max_abs_diff"] <= 1e-4
        assert card["config"]["params"]["cells"] == 2
        split = load_training_data(manifest, val_fraction=0.4).frame
        expected = split.loc[split["body_part"] == part, "fold"].value_counts()
        used = {fold: c["images"] + card["data"]["images_dropped"][fold] for fold, c in card["data"]["folds"].items()}
        assert used == expected.to_dict()  # the card counts images used, and those dropped
        # the class weights were computed on that part's training fold only
        assert list(card["data"]["class_weights"]) == [part]


@pytest.mark.tf
@pytest.mark.slow
def test_train_cli_done_when(synth_small, tmp_path, capsys):
    """`mura-ens train --plugin custom_cnn --data <synth>/MURA-v1.1 --out runs --epochs 2 --image-size 64`."""
    out = tmp_path / "runs"
    code = main(
        [
            "train",
            "--plugin",
            "custom_cnn",
            "--data",
            synth_small["root"],
            "--out",
            str(out),
            "--epochs",
            "2",
            "--image-size",
            "64",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = out / "custom_cnn-64-e2-wc-aug"  # named after the parameters that differ from the defaults
    assert captured.out.strip() == str(run)
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err
    assert f"mura-ens: warning: {run.name}: train: dropped 1 of " in captured.err
    assert "image(s) that could not be loaded (1 empty_file)" in captured.err
    assert not [p for p in out.iterdir() if p.name != run.name]  # no partial folder left beside the run

    card = json.loads((run / "card.json").read_text())
    assert card["onnx_max_abs_diff"] <= 1e-4
    assert card["config"]["epochs"] == 2 and card["config"]["image_size"] == 64 and card["config"]["seed"] == 0
    assert card["config"]["params"]["cells"] == 6
    assert len(card["data"]["manifest_sha256"]) == 64 and card["data"]["split_seed"] == 0
    assert set(card["metrics"]) == {"val", "test"}
    assert card["versions"]["tensorflow"] and card["versions"]["plugin:custom_cnn"].startswith("mura-ens-custom-cnn")
    quirks = synth_small["quirk_files"]
    assert card["data"]["images_not_loaded"] == {quirks["truncated"]: "truncated", quirks["zero_byte"]: "empty_file"}
    assert card["data"]["images_dropped"]["test"] == 1 and sum(card["data"]["images_dropped"].values()) == 2
    assert any(note.startswith(f"{run.name}: test: dropped 1 of ") for note in card["notes"])
    assert card["data"]["skipped_files"] == 1  # the planted macOS ._image1.png

    history = read_history(run / "history.tsv")
    assert [row["epoch"] for row in history] == [1, 2]
    assert list(history[0]) == list(HISTORY_COLUMNS)
    assert all(row["loss"] > 0 and row["val_loss"] > 0 and 0 <= row["auc"] <= 1 for row in history)

    evaluation = json.loads((run / "evaluation.json").read_text())
    for level in ("study", "image"):
        overall = evaluation[level]["overall"]
        assert set(overall) >= {"n", "kappa", "auc", "accuracy", "sensitivity", "specificity", "kappa_ci", "auc_ci"}
        assert set(evaluation[level]["by_body_part"]) <= set(synth_small["counts"]["valid"])
    assert evaluation["study"]["overall"]["n"] == synth_small["totals"]["valid"]["studies"]
    # the truncated test image is excluded, not scored
    assert evaluation["image"]["overall"]["n_excluded"] == 1
