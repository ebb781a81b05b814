"""`mura-ens train --cache DIR`: the decoded-image cache wired into the tf.data pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mura_ens.cli.main import main
from mura_ens.training.cache import ImageCache

pytestmark = pytest.mark.tf


def _entries(cache_dir):
    return sorted(p for p in cache_dir.iterdir() if (p / "index.json").is_file())


def test_train_with_cache_fills_it_once_and_reuses_it(synth_small, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    args = [
        "train",
        "--plugin",
        "custom_cnn",
        "--data",
        synth_small["root"],
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--param",
        "cells=3",
        "--param",
        "starting_filters=4",
        "--cache",
        str(cache_dir),
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    (entry,) = _entries(cache_dir)
    index = json.loads((entry / "index.json").read_text())
    assert index["image_size"] == 32 and index["resize_policy"] == "stretch"
    cache = ImageCache(entry, index["paths"], image_size=32, resize_policy="stretch")
    # Every train/val image was decoded into the cache: loadable ones cached, the planted empty file failed.
    state = np.asarray(cache.state)
    assert len(state) == index["count"] > 0 and (state != 0).all()
    assert cache.n_cached == index["count"] - 1
    card = json.loads((tmp_path / "a" / "custom_cnn-32-f4-c3-e2-wc-aug" / "card.json").read_text())
    assert card["config"]["cache"] == str(cache_dir)

    before = (entry / "images.u8").stat().st_mtime_ns
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert _entries(cache_dir) == [entry]  # same data, size and policy: the same entry, not rebuilt
    assert (entry / "images.u8").stat().st_mtime_ns == before
