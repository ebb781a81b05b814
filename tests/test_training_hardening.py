"""Issue 17: a run is finished or it is not there, and training never pretends.

Tiny data (``synth_small``, 64 px PNGs), 32 px inputs, one epoch of a 2-cell custom_cnn. Unreadable
images are copies of the PNGs' paths holding garbage bytes, put in a manifest CSV.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.training.atomic_run import (
    MARKER_FILE,
    building_run,
    choose_run_name,
    clean_stale_partials,
    partial_name,
)
from mura_ens.training.checks import MIN_TRAIN_IMAGES, check_cache_path, check_loaded, fold_warnings
from mura_ens.training.data import load_training_data
from mura_ens.training.history import progress_line, read_history

TINY = ["--plugin", "custom_cnn", "--epochs", "1", "--image-size", "32", "--batch-size", "16"]
TINY += ["-p", "cells=2", "-p", "starting_filters=4", "--no-augment"]
#: The run TINY trains is named after its parameters (mura_ens/training/run_names.py).
TINY_NAME = "custom_cnn-32-f4-c2-e1-bs16-wc"


def _manifest(synth_small) -> pd.DataFrame:
    return load_training_data(synth_small["root"]).frame.drop(columns="fold")


def _write(frame: pd.DataFrame, path: Path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _garbage(frame: pd.DataFrame, mask, folder: Path) -> pd.DataFrame:
    """``frame`` with the images under ``mask`` replaced by files of garbage bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = frame.copy()
    for i, index in enumerate(frame.index[mask]):
        bad = folder / f"bad{i}.png"
        bad.write_bytes(b"\x89PNG not really" + os.urandom(64))
        frame.loc[index, "path"] = str(bad)
    return frame


def _visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


def _train(data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", data, "--out", str(out), *TINY, *extra]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- refusals before anything is made (no TF)


def test_image_size_has_a_hard_limit(tmp_path, capsys):
    from mura_ens.training import TrainOptions

    assert TrainOptions(image_size=1024).image_size == 1024
    with pytest.raises(UsageError, match=r"image-size must be <= 1024, got 1025"):
        TrainOptions(image_size=1025)
    out = tmp_path / "runs"
    assert (
        main(["train", "--data", str(tmp_path), "--out", str(out), "--plugin", "custom_cnn", "--image-size", "4096"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mura-ens: error: image-size must be <= 1024, got 4096 (MURA images")
    assert not out.exists()


def test_cache_or_out_pointing_to_a_file_fails_before_creating_anything(synth_small, tmp_path, capsys):
    cache = tmp_path / "cache.bin"
    cache.write_bytes(b"x")
    out = tmp_path / "runs"
    assert main(_train(synth_small["root"], out, "--cache", str(cache))) == 2
    err = capsys.readouterr().err
    assert f"--cache {cache} is a file" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_cache_path(cache / "sub")
    check_cache_path(tmp_path / "new" / "cache")  # a folder to be made is fine
    assert main(_train(synth_small["root"], cache / "runs")) == 2  # --out under a file
    assert f"--out {cache / 'runs'}: {cache} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["one_class", "too_few"])
def test_unusable_training_fold_is_refused_before_anything(case, synth_small, tmp_path, capsys):
    frame = _manifest(synth_small)
    extra: list[str] = []
    if case == "one_class":
        frame["label"] = 0
        expected = "the training fold has normal labelled images only"
    else:
        extra = ["--max-images", str(MIN_TRAIN_IMAGES - 2)]
        expected = f"fewer than the minimum of {MIN_TRAIN_IMAGES}"
    out = tmp_path / "runs"
    assert main(_train(_write(frame, tmp_path / "m.csv"), out, *extra)) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --------------------------------------------------------------------------- checks (no TF)


def test_fold_warnings_name_a_leak_and_a_one_class_validation_fold(synth_small):
    rows = load_training_data(synth_small["root"]).frame
    rows = rows.loc[rows["body_part"] == "XR_WRIST"].copy()
    assert fold_warnings("m", rows) and "validation fold has normal studies only" in fold_warnings("m", rows)[0]
    train_patient = rows.loc[rows["fold"] == "train", "patient"].iloc[0]
    rows.loc[rows["fold"] == "test", "patient"] = train_patient
    (one_class, leak) = fold_warnings("m", rows)
    assert "early stopping, the learning-rate schedule and best.keras follow val_loss only" in one_class
    assert (
        f"1 patient(s) are both in the training data (train/val) and in the test set (MURA valid), e.g. {train_patient}"
        in leak
    )
    both = load_training_data(synth_small["root"]).frame
    assert fold_warnings("m", both) == []


def test_check_loaded_refuses_unreadable_folds_and_counts_drops():
    labels = [1, 1, 0, 0, 1, 0, 0, 0]
    train = pd.DataFrame({"path": [f"t{i}" for i in range(8)], "study": list("aabbccdd"), "label": labels})
    val = pd.DataFrame({"path": ["v0", "v1"], "study": ["x", "y"], "label": [0, 1]})
    assert check_loaded("m", train, val, {}) == []
    texts = check_loaded("m", train, val, {"t0": "truncated", "v1": "unreadable"})
    assert texts[0] == "m: train: dropped 1 of 8 image(s) that could not be loaded (1 truncated)"
    assert texts[1] == "m: val: dropped 1 of 2 image(s) that could not be loaded (1 unreadable)"
    assert "readable images of the validation fold are all normal" in texts[2]
    with pytest.raises(UsageError, match="m: no readable training image: none of the 8 image.*8 unreadable"):
        check_loaded("m", train, val, {p: "unreadable" for p in train["path"]})
    with pytest.raises(UsageError, match="fewer than the minimum"):
        check_loaded("m", train, val, {p: "unreadable" for p in train["path"][:5]})
    with pytest.raises(UsageError, match="normal readable images only"):
        check_loaded("m", train, val, {"t0": "x", "t1": "x", "t4": "x"})
    with pytest.raises(UsageError, match="no readable validation image"):
        check_loaded("m", train, val, {"v0": "x", "v1": "x"})


def test_undefined_metrics_are_na_on_the_console_and_null_in_files(tmp_path):
    from mura_ens.training.history import history_tsv

    row = {"epoch": 1, "loss": 0.5, "auc": None, "accuracy": 0.5, "kappa": float("nan"), "lr": 1e-3, "seconds": 1.0}
    line = progress_line(row, 1, best=False)
    assert "auc n/a" in line and "kappa n/a" in line and "0.000" not in line
    path = tmp_path / "history.tsv"
    path.write_text(history_tsv([row]))
    (back,) = read_history(path)
    assert back["auc"] is None and back["kappa"] is None and back["loss"] == 0.5


# --------------------------------------------------------------------------- run folder lifecycle (no TF)


def test_run_names_skip_finished_runs_and_live_builds(tmp_path):
    out = tmp_path / "runs"
    assert choose_run_name(out, "cnn") == out / "cnn"
    (out / "cnn").mkdir(parents=True)
    assert choose_run_name(out, "cnn") == out / "cnn"  # an empty folder is reused
    (out / "cnn" / "card.json").write_text("{}")
    assert choose_run_name(out, "cnn") == out / "cnn-2"
    (out / partial_name("cnn-2", os.getppid())).mkdir()  # a live process builds cnn-2
    assert choose_run_name(out, "cnn") == out / "cnn-3"
    (out / partial_name("cnn-3", _dead_pid())).mkdir()  # a killed one does not hold a name
    assert choose_run_name(out, "cnn") == out / "cnn-3"
    with pytest.raises(UsageError, match="bad run name"):
        choose_run_name(out, ".hidden")


def test_stale_partials_of_the_same_configuration_are_cleaned(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    dead = _dead_pid()

    def partial(name: str, pid: int, key: str) -> Path:
        folder = out / partial_name(name, pid)
        folder.mkdir()
        (folder / "history.tsv").write_text("epoch\n")
        (folder / MARKER_FILE).write_text(json.dumps({"pid": pid, "fingerprint": key, "host": socket.gethostname()}))
        return folder

    mine = partial("cnn", dead, "abc")
    other_config = partial("cnn-x", dead, "zzz")
    running = partial("cnn-y", os.getppid(), "abc")
    assert clean_stale_partials(out, "abc") == [mine]
    assert not mine.exists() and other_config.is_dir() and running.is_dir()


def test_a_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "made" / "runs"
    with pytest.raises(RuntimeError, match="boom"), building_run(out, "cnn", config_fingerprint="k") as run:
        assert run.work.is_dir() and run.work.name.startswith(".cnn.partial-") and run.final == out / "cnn"
        (run.work / "model.onnx").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists()  # it made the folder, and it is empty again
    out.mkdir(parents=True)
    with building_run(out, "cnn", config_fingerprint="k") as run:
        (run.work / "model.onnx").write_bytes(b"x")
        with pytest.raises(RuntimeError, match="no card.json"):
            run.commit()
        (run.work / "card.json").write_text("{}")
        assert run.commit() == out / "cnn"
    assert sorted(os.listdir(out)) == ["cnn"] and sorted(os.listdir(out / "cnn")) == ["card.json", "model.onnx"]


def test_export_refuses_unfinished_runs(tmp_path, capsys):
    from mura_ens.training.export import export_run

    killed = tmp_path / "custom_cnn"
    killed.mkdir()
    for name in ("best.keras", "history.tsv", "model.onnx"):
        (killed / name).write_bytes(b"x")
    building = tmp_path / partial_name("custom_cnn-2", 12345)
    shutil.copytree(killed, building)
    (building / "card.json").write_text("{}")
    for folder, expected in ((killed, "no card.json: training stopped before the end"), (building, "never exported")):
        for extra in ([], ["--quantize", "int8"]):
            assert main(["export", str(folder), *extra]) == 2
            err = capsys.readouterr().err
            assert "is an unfinished run" in err and expected in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(UsageError, match="unfinished run"):
            export_run(folder)


def test_export_hint_names_the_data_option(tmp_path):
    from mura_ens.onnx.quantize import run_folds

    with pytest.raises(UsageError, match=r"moved\? pass --data PATH"):
        run_folds({"data": {"source": str(tmp_path / "gone")}, "config": {}})
    with pytest.raises(UsageError, match=r"mura-ens export --data PATH"):
        run_folds({"data": {"source": "<DataFrame>"}, "config": {}})


# --------------------------------------------------------------------------- TensorFlow side


@pytest.mark.tf
def test_keras_metrics_are_undefined_not_zero_for_one_class():
    from mura_ens.training.keras_metrics import BinaryKappa, UnweightedAUC

    y, p = np.zeros((4, 1), "float32"), np.array([[0.1], [0.7], [0.2], [0.9]], "float32")
    auc = UnweightedAUC(name="auc")
    auc.update_state(y, p)
    assert np.isnan(float(auc.result()))
    auc.update_state(np.ones((1, 1), "float32"), np.array([[0.95]], "float32"))
    assert float(auc.result()) == pytest.approx(1.0)
    kappa = BinaryKappa()
    assert np.isnan(float(kappa.result()))  # no rows
    kappa.update_state(y, np.full((4, 1), 0.1, "float32"))
    assert np.isnan(float(kappa.result()))  # one class in labels and predictions


@pytest.mark.tf
def test_early_stopping_and_checkpoint_watch_val_loss(tmp_path):
    from mura_ens.training.callbacks import BestCheckpoint, EpochLog
    from mura_ens.training.trainer import _callbacks

    stopping, schedule, checkpoint, _ = _callbacks(3, BestCheckpoint(tmp_path / "b.keras"), EpochLog(tmp_path / "h", 1))
    assert stopping.monitor == schedule.monitor == checkpoint.monitor == "val_loss"


@pytest.mark.tf
def test_weights_of_another_architecture_report_the_whole_mismatch(tmp_path):
    from mura_ens.errors import PluginError
    from mura_ens.registry import get_plugin
    from mura_ens.training.trainer import build_model

    plugin = get_plugin("custom_cnn")
    config = {"image_size": 32, "weights": None, **plugin.defaults, "cells": 2, "starting_filters": 4}
    weights = tmp_path / "small.weights.h5"
    build_model(plugin, config).save_weights(weights)
    with pytest.raises(PluginError) as caught:
        build_model(plugin, {**config, "weights": str(weights), "starting_filters": 8})
    text = str(caught.value)
    assert f"--weights {weights} (saved from another architecture" in text
    assert "variable.shape=(3, 3, 3, 8), Received: value.shape=(3, 3, 3, 4)" in text
    assert "List of objects that could not be loaded" in text and "\n" not in text and "value=[[" not in text


@pytest.mark.tf
def test_memory_guard_estimates_and_refuses(monkeypatch, tmp_path):
    from mura_ens.registry import get_plugin
    from mura_ens.training import resources
    from mura_ens.training.trainer import build_model

    plugin = get_plugin("custom_cnn")
    model = build_model(
        plugin, {"image_size": 32, "weights": None, **plugin.defaults, "cells": 2, "starting_filters": 4}
    )
    small = resources.estimate_training_memory(model, batch_size=8, image_size=32)
    big = resources.estimate_training_memory(model, batch_size=80, image_size=32)
    assert small.weights == model.count_params() * 16 and small.activations > 0
    assert big.activations == pytest.approx(10 * small.activations, rel=1e-6) and big.input == 10 * small.input
    monkeypatch.setattr(resources, "available_memory", lambda: (int(1.5 * big.total), "test"))
    assert resources.check_training_memory("m", small, on_gpu=False, batch_size=8, image_size=32) is None
    assert "lower --batch-size or --image-size" in resources.check_training_memory(
        "m", big, on_gpu=False, batch_size=80, image_size=32
    )
    monkeypatch.setattr(resources, "available_memory", lambda: (big.total // 2, "test"))
    with pytest.raises(
        UsageError, match=r"m: training needs about .* \(batch 80 at 32 px.*lower --batch-size or --image-size"
    ):
        resources.check_training_memory("m", big, on_gpu=False, batch_size=80, image_size=32)
    assert resources.check_training_memory("m", big, on_gpu=True, batch_size=80, image_size=32) is None
    monkeypatch.setenv(resources.MEMORY_CHECK_ENV, "warn")
    assert resources.check_training_memory("m", big, on_gpu=False, batch_size=80, image_size=32)


def test_available_memory_reads_cgroup_limits(tmp_path):
    from mura_ens.training import resources

    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("300\n")
    assert resources._cgroup_room(tmp_path) == 700
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert resources._cgroup_room(tmp_path) is None
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("5000")
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text("1000")
    assert resources._cgroup_room(tmp_path) == 4000
    available, source = resources.available_memory()
    assert available is None or available > 0


@pytest.mark.tf
def test_a_batch_far_above_memory_is_refused_before_any_folder(synth_small, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(_train(synth_small["root"], out, "--batch-size", "100000", "--image-size", "1024")) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("mura-ens: error:")]
    assert "per step (batch 100000 at 1024 px" in line and "lower --batch-size or --image-size" in line
    assert not out.exists()


@pytest.mark.tf
@pytest.mark.parametrize("which", ["train", "all"])
def test_unreadable_training_images_stop_the_run_and_keep_nothing(which, synth_small, tmp_path, capsys):
    frame = _manifest(synth_small)
    folds = load_training_data(synth_small["root"]).frame  # same rows, same order
    mask = (folds["fold"] == "train").to_numpy() if which == "train" else np.ones(len(frame), bool)
    data = _write(_garbage(frame, mask, tmp_path / "bad"), tmp_path / "m.csv")
    out = tmp_path / "runs"
    out.mkdir()
    assert main(_train(data, out)) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("mura-ens: error:")]
    assert f"{TINY_NAME}: no readable training image: none of the" in line, err
    assert "parity" not in line, err
    assert os.listdir(out) == []  # no run folder, no partial folder


@pytest.mark.tf
def test_warnings_that_matter_go_to_stderr_and_the_card(synth_small, tmp_path, capsys):
    """XR_WRIST of synth_small has a one-class validation fold; add a leak and unreadable train/test images."""
    frame = _manifest(synth_small)
    folds = load_training_data(synth_small["root"]).frame
    wrist = folds["body_part"] == "XR_WRIST"
    train_patient = folds.loc[wrist & (folds["fold"] == "train"), "patient"].iloc[0]
    frame.loc[wrist & (frame["split"] == "valid"), "patient"] = train_patient  # a leak into the test set
    first = {fold: folds.index[wrist & (folds["fold"] == fold)][0] for fold in ("train", "test")}
    frame = _garbage(frame, frame.index.isin(list(first.values())), tmp_path / "bad")
    data = _write(frame, tmp_path / "m.csv")
    split = load_training_data(data).frame
    listed = split.loc[split["body_part"] == "XR_WRIST", "fold"].value_counts()
    assert set(split.loc[(split["body_part"] == "XR_WRIST") & (split["fold"] == "val"), "label"]) == {0}

    out = tmp_path / "runs"
    assert main(_train(data, out, "--body-part", "XR_WRIST")) == 0
    err = capsys.readouterr().err
    warned = [x.removeprefix("mura-ens: warning: ") for x in err.splitlines() if x.startswith("mura-ens: warning:")]
    name = f"{TINY_NAME}-XR_WRIST"  # named after its parameters, plus the body part
    expected = [
        f"{name}: the validation fold has normal studies only",
        f"{name}: 1 patient(s) are both in the training data",
        f"{name}: train: dropped 1 of {listed['train']} image(s) that could not be loaded (1 ",
        f"{name}: test: dropped 1 of {listed['test']} image(s) that could not be loaded (1 ",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in warned) == 1, (start, warned)
    epoch = next(x for x in err.splitlines() if x.startswith("epoch 1/1"))
    assert "val loss" in epoch and "| val loss " in epoch and " auc n/a " in epoch.split("|")[1], epoch

    run = out / name
    assert _visible(out) == [run.name] and os.listdir(out) == [run.name]
    card = json.loads((run / "card.json").read_text())
    assert all(w in card["notes"] for w in warned)
    assert card["data"]["folds"]["train"]["images"] == listed["train"] - 1  # the images actually used
    assert card["data"]["folds"]["test"]["images"] == listed["test"] - 1
    assert card["data"]["images_dropped"] == {"train": 1, "val": 0, "test": 1}
    assert card["training"]["history"][0]["val_auc"] is None
    assert read_history(run / "history.tsv")[0]["val_auc"] is None
    assert card["metrics"]["test"]["study"]["overall"]["auc"] is None
    assert card["export"]["path"] == str(run / "model.onnx") and card["model_name"] == run.name


# --------------------------------------------------------------------------- kill -9


LAUNCHER = """
import sys, time
from pathlib import Path

import mura_ens.training.trainer as trainer

flag, mode = Path(sys.argv[1]), sys.argv[2]
real = trainer.write_card


def paused(run_dir, card):  # model.onnx has passed its parity check; card.json is next
    flag.write_text(str(run_dir))
    time.sleep(600)
    return real(run_dir, card)


if mode == "before-card":
    trainer.write_card = paused
from mura_ens.cli.main import main

sys.exit(main(sys.argv[3:]))
"""


def _kill_when(tmp_path: Path, args: list[str], mode: str, ready) -> None:
    """Run ``mura-ens train`` in a subprocess; kill -9 it as soon as ``ready()`` holds."""
    launcher = tmp_path / "launch_train.py"
    launcher.write_text(LAUNCHER)
    log = tmp_path / f"train-{mode}.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "w") as stream:
        proc = subprocess.Popen(
            [sys.executable, str(launcher), str(tmp_path / "paused"), mode, *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 240
        try:
            while not ready():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the training never reached the kill point"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def _partials(out: Path) -> list[Path]:
    return sorted(p for p in out.glob(".*.partial-*")) if out.exists() else []


@pytest.mark.tf
@pytest.mark.slow
def test_kill_9_never_leaves_a_run_that_score_uses(synth_small, tmp_path, capsys):
    from mura_ens.scoring.models import find_model_files

    out = tmp_path / "runs"
    args = _train(synth_small["root"], out, "--max-images", "24")
    valid = str(Path(synth_small["root"]) / "valid")

    def refused(*expected: str) -> None:
        assert _visible(out) == []
        assert main(["score", valid, "--models", str(out), "--out", str(tmp_path / "scored")]) == 2
        err = capsys.readouterr().err
        assert "no ONNX models found" in err and len(err.strip().splitlines()) == 1, err
        assert all(text in err for text in expected), err
        for partial in _partials(out):
            assert main(["export", str(partial)]) == 2
            assert "is an unfinished run" in capsys.readouterr().err

    # 1. killed as soon as the run folder under construction appears
    _kill_when(tmp_path, args, "none", lambda: any((p / MARKER_FILE).exists() for p in _partials(out)))
    (first,) = _partials(out)
    refused()
    # 2. killed after model.onnx passed its parity check, before card.json; this run cleaned the first one
    _kill_when(tmp_path, args, "before-card", lambda: (tmp_path / "paused").exists())
    (second,) = _partials(out)
    assert second != first and (second / "model.onnx").is_file() and not (second / "card.json").exists()
    refused("unfinished", second.name)

    # the next run of the same configuration cleans it and takes the plain name
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("an unfinished run of this configuration whose process is gone") == 1
    name = TINY_NAME.replace("-wc", "-mi24-wc")  # --max-images 24 is part of the name
    assert os.listdir(out) == [name]
    assert list(find_model_files(out).files) == [out / name / "model.onnx"]


def test_a_partial_folder_holding_its_card_is_not_scored(run_dir, tmp_path):
    """The instant between card.json written and the rename: a hidden partial folder that looks finished."""
    from mura_ens.scoring.models import find_model_files

    out = tmp_path / "runs"
    out.mkdir()
    shutil.copytree(run_dir, out / partial_name(run_dir.name, _dead_pid()))
    with pytest.raises(UsageError, match="no ONNX models found"):
        find_model_files(out)


def test_new_training_modules_are_tf_free():
    code = "import sys, mura_ens.training.atomic_run, mura_ens.training.checks, mura_ens.training.resources; "
    code += "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
