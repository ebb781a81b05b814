"""Run names from parameters (a pure function) and what training does with a name already taken (no TF).

The end-to-end side (a real run reused untouched, ``--overwrite``, ``--name`` clashes through the CLI,
TensorBoard logs and the schematic) is ``tests/test_tensorboard_logs.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from mura_ens.errors import UsageError
from mura_ens.registry import get_plugin
from mura_ens.training.atomic_run import building_run
from mura_ens.training.reuse import Settled, card_identity, differing_keys, run_identity, settle
from mura_ens.training.run_names import MAX_NAME_LENGTH, NameSpec, option_defaults, param_token, run_name

CNN = get_plugin("custom_cnn")
DENSENET = get_plugin("densenet201")


def _spec(plugin=CNN, *, size: int | None = None, params=None, options=None, **fields) -> NameSpec:
    """A spec as the trainer makes it: the plugin's defaults, default training options, the plugin's weights."""
    default_weights = None if plugin.default_weights == "none" else plugin.default_weights
    return NameSpec(
        plugin=plugin.name,
        image_size=size or plugin.default_input_size,
        params={**plugin.defaults, **(params or {})},
        defaults=dict(plugin.defaults),
        weights=fields.pop("weights", default_weights),
        default_weights=default_weights,
        options={**option_defaults(1e-3), **(options or {})},
        option_defaults=option_defaults(1e-3),
        **fields,
    )


def test_the_seed_study_comparison_gets_readable_names():
    assert run_name(_spec(DENSENET)) == "densenet201-224-wc-aug"  # every parameter at its default
    assert run_name(_spec(DENSENET, params={"trainable_after": 690})) == "densenet201-224-tla690-wc-aug"
    mlp = _spec(DENSENET, size=256, params={"head": "512-512", "dropout": 0.5}, options={"epochs": 20})
    assert run_name(mlp) == "densenet201-256-head512x512-dp0.5-e20-wc-aug"
    plain = _spec(CNN, params={"cells": 3}, class_weights=False, augment=False)
    assert run_name(plain) == "custom_cnn-256-c3"


def test_names_are_stable_and_omit_defaults():
    spec = _spec(CNN, size=64, params={"starting_filters": 16, "batch_norm": False})
    assert run_name(spec) == run_name(spec) == "custom_cnn-64-f16-nobn-wc-aug"
    shuffled = replace(spec, params=dict(reversed(list(spec.params.items()))))  # order of the dict is irrelevant
    assert run_name(shuffled) == run_name(spec)
    # a parameter set to its default value names nothing
    assert run_name(_spec(CNN, params={"cells": CNN.defaults["cells"]})) == run_name(_spec(CNN))


def test_every_parameter_and_option_that_differs_changes_the_name():
    base = _spec(CNN, size=32)
    seen = {run_name(base)}
    changed = {"starting_filters": 8, "cells": 2, "convs_per_cell": 2, "pooling": "avg", "batch_norm": False}
    changed |= {"bn_momentum": 0.99, "dropout": 0.5}
    for key, value in changed.items():
        assert value != CNN.defaults[key]
        seen.add(run_name(replace(base, params={**base.params, key: value})))
    options = {"epochs": 5, "patience": 3, "batch_size": 8, "lr": 1e-5, "seed": 2, "max_images": 50}
    options |= {"val_fraction": 0.3, "resize_policy": "pad", "init_from": "/runs/a"}
    for key, value in options.items():
        seen.add(run_name(replace(base, options={**base.options, key: value})))
    seen.add(run_name(replace(base, weights="/w/my_weights.weights.h5")))
    seen.add(run_name(replace(base, class_weights=False)))
    seen.add(run_name(replace(base, augment=False)))
    seen.add(run_name(replace(base, image_size=64)))
    assert len(seen) == 1 + len(changed) + len(options) + 4


def test_tokens_and_values():
    assert param_token("trainable_after", 606) == "tla606"
    assert param_token("head", "512-512") == "head512x512" and param_token("head", "") == "headnone"
    assert param_token("dropout", 0.25) == "dp0.25" and param_token("spatial_dropout", 0.1) == "sdp0.1"
    assert param_token("batch_norm", True) == "bn" and param_token("batch_norm", False) == "nobn"
    assert param_token("growth_rate", 12) == "growth_rate12"  # a key the table does not know: itself
    assert param_token("trainable_after", -1) == "tlam1"
    spec = _spec(CNN, size=32, options={"lr": 1e-5, "val_fraction": 0.25, "resize_policy": "pad", "seed": 3})
    assert run_name(spec) == "custom_cnn-32-lr0.00001-s3-vf0.25-pad-wc-aug"  # plain decimals, never 1e-05
    assert run_name(replace(spec, weights="/w/seed model.weights.h5")) == (
        "custom_cnn-32-wseed_model-lr0.00001-s3-vf0.25-pad-wc-aug"
    )
    assert run_name(_spec(DENSENET, weights=None)) == "densenet201-224-wnone-wc-aug"
    for name in (run_name(spec), run_name(_spec(DENSENET, params={"head": "a/b c"}))):
        assert "/" not in name and " " not in name and not name.startswith(".")


def test_specialists_and_warm_starts():
    family = replace(_spec(CNN, size=64, params={"cells": 2}), plugin="specialists", base="custom_cnn")
    assert run_name(family) == "specialists-custom_cnn-64-c2-wc-aug"  # the trainer adds -<body part>
    warm = replace(family, options={**family.options, "init_from": "/runs/custom_cnn"}, weights=None)
    assert run_name(warm) == "specialists-custom_cnn-64-c2-init-wc-aug"
    # the fine-tuning rate of a warm start is its default: not shown; another rate is
    fine = replace(warm, options={**warm.options, "lr": 1e-4}, option_defaults=option_defaults(1e-4))
    assert run_name(fine) == run_name(warm)
    assert run_name(replace(fine, options={**fine.options, "lr": 1e-3})) == run_name(warm).replace(
        "-init", "-lr0.001-init"
    )


def test_long_names_are_bounded_and_stay_distinct():
    many = {f"option_{i}": i for i in range(40)}
    spec = _spec(CNN, params=many)
    other = _spec(CNN, params={**many, "option_39": 0})
    assert len(run_name(spec)) == MAX_NAME_LENGTH and run_name(spec).startswith("custom_cnn-256-option_0")
    assert run_name(spec) != run_name(other) and len(run_name(other)) <= MAX_NAME_LENGTH


# --------------------------------------------------------------------------- reuse: what a taken name means


CONFIG = {"plugin": "custom_cnn", "base": None, "body_parts": [], "params": {"cells": 2}, "epochs": 1, "lr": 0.001}


def _finished(folder: Path, config=CONFIG, sha="abc") -> Path:
    folder.mkdir(parents=True)
    card = {"config": {**config, "cache": "/somewhere", "strategy": "one"}, "data": {"manifest_sha256": sha}}
    (folder / "card.json").write_text(json.dumps(card))
    (folder / "model.onnx").write_bytes(b"onnx")
    return folder


def test_identity_is_the_config_and_the_data_without_how_it_was_computed(tmp_path):
    run = _finished(tmp_path / "run")
    identity = card_identity(json.loads((run / "card.json").read_text()))
    assert identity == run_identity({**CONFIG, "cache": None, "strategy": "mirrored"}, "abc")
    other = run_identity({**CONFIG, "params": {"cells": 3}, "epochs": 2}, "def")
    assert differing_keys(identity, other) == ["epochs", "manifest_sha256", "params.cells"]


def test_settle_reuses_replaces_or_refuses(tmp_path):
    out = tmp_path / "runs"
    _finished(out / "cnn")
    same = run_identity(CONFIG, "abc")
    other = run_identity({**CONFIG, "params": {"cells": 3}}, "abc")

    assert settle(out, "cnn", same, explicit=False, overwrite=False) == Settled(name="cnn", reuse=True)
    assert settle(out, "cnn", same, explicit=True, overwrite=True) == Settled(name="cnn", replace=True)
    with pytest.raises(UsageError) as error:
        settle(out, "cnn", other, explicit=True, overwrite=False)
    message = str(error.value)
    assert "differs in: params.cells)" in message and "--overwrite" in message and "another --name" in message
    assert "\n" not in message
    derived = settle(out, "cnn", other, explicit=False, overwrite=False)  # built beside, under the next free name
    assert (derived.name, derived.reuse, derived.replace) == ("cnn", False, False) and "params.cells" in derived.note
    replaced = settle(out, "cnn", other, explicit=True, overwrite=True)
    assert replaced.replace and not replaced.reuse and "params.cells" in replaced.note
    # a derived name finds its configuration at a numbered sibling; an explicit one looks at its own folder only
    _finished(out / "cnn-3", config={**CONFIG, "params": {"cells": 3}})
    assert settle(out, "cnn", other, explicit=False, overwrite=False) == Settled(name="cnn-3", reuse=True)
    with pytest.raises(UsageError):
        settle(out, "cnn", other, explicit=True, overwrite=False)
    # nothing there, or not a finished run: build
    assert settle(out, "new", same, explicit=True, overwrite=False) == Settled(name="new")
    (out / "unfinished").mkdir()
    (out / "unfinished" / "history.tsv").write_text("epoch\n")
    assert settle(out, "unfinished", same, explicit=True, overwrite=True) == Settled(name="unfinished", replace=True)


def test_overwrite_commit_replaces_the_old_run_only_once_the_new_one_is_finished(tmp_path):
    out = tmp_path / "runs"
    old = _finished(out / "cnn")
    with building_run(out, "cnn", config_fingerprint="f", replace=True) as run:
        assert run.final == old and (old / "model.onnx").read_bytes() == b"onnx"  # still whole while building
        (run.work / "model.onnx").write_bytes(b"new")
        (run.work / "card.json").write_text("{}")
        assert run.commit() == old
    assert (old / "model.onnx").read_bytes() == b"new" and sorted(os.listdir(old)) == ["card.json", "model.onnx"]
    assert os.listdir(out) == ["cnn"]  # neither the partial nor the replaced folder is left
    with building_run(out, "cnn", config_fingerprint="f") as run:  # without replace: beside it, as before
        assert run.final == out / "cnn-2"
