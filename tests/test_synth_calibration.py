"""Calibration guard: the ``mura`` difficulty is harder than ``easy`` for the same small CNN, yet learnable.

One seeded, tiny training per difficulty (the ``custom_cnn`` plugin's graph at 48 px, a few epochs on a
few hundred images held in memory): the generalist's study AUC on the ``valid`` split must be lower on
``mura`` than on ``easy`` and clearly above chance. The demo's numbers (docs/synthetic.md) are the
calibration itself; this keeps a change of the renderer from making ``mura`` trivial or hopeless.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mura_ens.data.images import ImageError, load_image
from mura_ens.data.official import read_official
from mura_ens.data.synth import make_synthetic_mura

SIDE = 48


def _arrays(root: str):
    frame = read_official(root).manifest
    images, keep = [], []
    for index, path in enumerate(frame["path"]):
        try:
            images.append(load_image(path, SIDE))
            keep.append(index)
        except ImageError:
            continue
    return frame.iloc[keep].reset_index(drop=True), np.stack(images).astype("float32")


def _study_auc(tmp_path, difficulty: str) -> float:
    import keras

    from mura_ens import registry

    summary = make_synthetic_mura(
        tmp_path / difficulty, studies_per_part=40, size=64, seed=21, valid_fraction=0.4, quirks=False,
        difficulty=difficulty,
    )  # fmt: skip
    frame, images = _arrays(summary["root"])
    train = (frame["split"] == "train").to_numpy()
    plugin = registry.get_plugin("custom_cnn")
    config = {**plugin.defaults, "starting_filters": 8, "cells": 4, "image_size": SIDE, "weights": "none"}
    keras.utils.set_random_seed(0)
    model = plugin.build(config)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy")
    labels = frame["label"].astype("float32").to_numpy()
    model.fit(images[train], labels[train], batch_size=32, epochs=12, verbose=0, shuffle=True)
    frame["prob"] = model.predict(images, batch_size=64, verbose=0).ravel()
    studies = frame.loc[~train].groupby("study").agg(label=("label", "first"), prob=("prob", "mean"))
    return float(roc_auc_score(studies["label"], studies["prob"]))


@pytest.mark.tf
@pytest.mark.slow
def test_mura_is_harder_than_easy_and_not_hopeless(tmp_path):
    easy = _study_auc(tmp_path, "easy")
    mura = _study_auc(tmp_path, "mura")
    assert easy > 0.85, easy
    assert mura < easy - 0.05, (mura, easy)
    assert mura > 0.6, mura
