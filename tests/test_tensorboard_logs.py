"""A real run's folder: TensorBoard logs, the model schematic, reuse of a finished run, ``--overwrite``.

One tiny custom_cnn (32 px, one epoch, at most 24 images per fold) is trained once for the module and
checked: its name comes from its parameters, ``tensorboard/`` holds the per-epoch scalars (equal to
``history.tsv``) and the graph, ``model.txt`` the layer summary. Training it again reuses it without
touching a file; ``--name`` with another configuration is refused (exit 2); ``--overwrite
--no-tensorboard`` retrains it under the same name, without logs. The pure naming and reuse rules:
``tests/test_run_names.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import pytest

import mura_ens
from mura_ens.cli.main import main
from mura_ens.training.history import read_history

pytestmark = pytest.mark.tf

OPTIONS = {"epochs": 1, "batch_size": 8, "image_size": 32, "max_images": 24, "seed": 1}
PARAMS = {"cells": 1, "starting_filters": 4}
NAME = "custom_cnn-32-f4-c1-e1-bs8-s1-mi24-wc-aug"
CLI_OPTIONS = ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--max-images", "24", "--seed", "1"]


@pytest.fixture(scope="module")
def trained(synth_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tb_runs")
    (run,) = mura_ens.train("custom_cnn", synth_small["root"], out, params=PARAMS, progress=False, **OPTIONS)
    return run.path


def _mtimes(folder: Path) -> dict[str, int]:
    stamps = {".": folder.stat().st_mtime_ns}
    for path in folder.rglob("*"):
        stamps[str(path.relative_to(folder))] = path.stat().st_mtime_ns
    return stamps


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``: tag -> [(step, value)] (Keras 3 writes tensor summaries)."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    found = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in events.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        if all(np.ndim(value) == 0 and np.asarray(value).dtype.kind == "f" for _, value in values):
            found[tag] = [(step, float(value)) for step, value in values]
    found["graph"] = [(0, float(events.Tags()["graph"]))]
    return found


def test_the_run_is_named_after_its_parameters(trained):
    assert trained.name == NAME
    assert os.listdir(trained.parent) == [NAME]  # no partial folder left beside it
    card = json.loads((trained / "card.json").read_text())
    assert card["model_name"] == card["onnx_metadata"]["model_name"] == NAME
    assert card["training"]["tensorboard"] == "tensorboard"


def test_tensorboard_logs_hold_the_epoch_scalars_and_the_graph(trained):
    (row,) = read_history(trained / "history.tsv")
    train, validation = _events(trained / "tensorboard" / "train"), _events(trained / "tensorboard" / "validation")
    assert list(trained.glob("tensorboard/train/events.out.tfevents.*"))
    for metric in ("loss", "auc", "kappa", "accuracy"):
        for logged, column in ((train, metric), (validation, f"val_{metric}")):
            ((step, value),) = logged[f"epoch_{metric}"]
            expected = row[column]
            assert step == 0 and (math.isnan(value) if expected is None else value == pytest.approx(expected, abs=1e-5))
    ((_, lr),) = train["epoch_learning_rate"]
    assert lr == pytest.approx(row["lr"]) == pytest.approx(1e-3)
    assert "epoch_learning_rate" not in validation
    assert train["graph"] == [(0, 1.0)]  # the op graph of the forward pass (the Graphs tab)


def test_model_txt_counts_the_parameters_and_the_card_records_the_schematic(trained):
    import numpy as np

    from mura_ens.training.export import load_best_model

    model = load_best_model(trained / "best.keras")
    text = (trained / "model.txt").read_text(encoding="utf-8")
    (totals,) = re.findall(r"^parameters: total (\d+), trainable (\d+), non-trainable (\d+)$", text, re.M)
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert [int(n) for n in totals] == [model.count_params(), trainable, model.count_params() - trainable]
    for layer in model.layers:  # one line per layer, with its parameter count and the layer it takes
        (line,) = [line for line in text.splitlines() if line.startswith(f"{layer.name} ({type(layer).__name__})")]
        assert f" {layer.count_params():,} " in line
        if layer.name == "abnormal":
            assert line.split()[-1] == "dropout"
    schematic = json.loads((trained / "card.json").read_text())["schematic"]
    assert schematic["model_txt"] is True and schematic["parameters"]["total"] == model.count_params()
    can_draw = shutil.which("dot") is not None and __import__("importlib").util.find_spec("pydot") is not None
    if can_draw:
        assert schematic["model_png"] is True and schematic["why"] is None
        assert (trained / "model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert schematic["model_png"] is False and not (trained / "model.png").exists()
        assert "Graphviz" in schematic["why"] or "pydot" in schematic["why"]


def test_an_identical_configuration_reuses_the_run_untouched(trained, synth_small, capsys):
    before = _mtimes(trained)
    started = time.perf_counter()
    code = main(
        ["train", "--plugin", "custom_cnn", "--data", synth_small["root"], "--out", str(trained.parent)]
        + CLI_OPTIONS
        + ["-p", "starting_filters=4", "-p", "cells=1"]
    )
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(trained)
    assert f"reusing {trained}: a finished run with the same parameters and data" in captured.err
    assert "epoch 1/1" not in captured.err and seconds < 10
    assert _mtimes(trained) == before
    (again,) = mura_ens.train("custom_cnn", synth_small["root"], trained.parent, params=PARAMS, quiet=True, **OPTIONS)
    assert again.path == trained and again.card == mura_ens.load_run(trained).card
    assert _mtimes(trained) == before


def test_an_explicit_name_holding_another_configuration_is_refused(trained, synth_small, capsys):
    before = _mtimes(trained)
    args = ["train", "--plugin", "custom_cnn", "--data", synth_small["root"], "--out", str(trained.parent)]
    args += [*CLI_OPTIONS, "-p", "starting_filters=4", "-p", "cells=2", "--name", NAME]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mura-ens: error: --name " + NAME)
    assert "another configuration (differs in: params.cells)" in err and "--overwrite" in err
    assert _mtimes(trained) == before and os.listdir(trained.parent) == [NAME]


def test_overwrite_retrains_under_the_same_name_and_no_tensorboard_writes_no_logs(trained, synth_small, tmp_path):
    copy = shutil.copytree(trained, tmp_path / "runs" / NAME)  # the module's run stays as the other tests see it
    before = _mtimes(copy)
    (run,) = mura_ens.train(
        "custom_cnn",
        synth_small["root"],
        copy.parent,
        params=PARAMS,
        progress=False,
        overwrite=True,
        tensorboard=False,
        **OPTIONS,
    )
    assert run.path == copy and os.listdir(copy.parent) == [NAME]  # same name; no partial or old folder left
    after = _mtimes(copy)
    assert after["card.json"] > before["card.json"] and after["model.onnx"] > before["model.onnx"]
    assert not (copy / "tensorboard").exists() and run.card["training"]["tensorboard"] is None
    assert (copy / "model.txt").is_file()
