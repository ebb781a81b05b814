"""Seeded training is reproducible: the same stream, and byte-identical model.onnx / evaluation.json, run after run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mura_ens.training.data import load_training_data

pytestmark = pytest.mark.tf

MURA_ENS = str(Path(sys.executable).with_name("mura-ens"))


def _epochs(dataset, n: int) -> list[np.ndarray]:
    return [np.concatenate([images.numpy() for images, _labels, _weights in dataset]) for _ in range(n)]


def test_seeded_stream_is_the_same_in_every_instance_and_new_every_epoch(synth_small):
    """Shuffled, decoded in parallel and augmented: two streams with one seed give the same pixels, epoch by epoch."""
    from mura_ens.training.pipeline import LoadFailures, StreamSettings, training_dataset

    frame = load_training_data(synth_small["root"]).frame.head(40)
    settings = StreamSettings(image_size=32, resize_policy="stretch", batch_size=8, seed=4)

    def stream(seed: int = 4):
        return training_dataset(
            frame,
            np.ones(len(frame), np.float32),
            StreamSettings(image_size=32, resize_policy="stretch", batch_size=8, seed=seed),
            failures=LoadFailures(),
            shuffle=True,
            augment=True,
        )

    assert settings.deterministic is True  # the default
    first, second = _epochs(stream(), 2), _epochs(stream(), 2)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # reshuffled and re-augmented each epoch
    assert not np.array_equal(first[0], _epochs(stream(seed=5), 1)[0])


@pytest.mark.slow
def test_two_seeded_runs_give_identical_files(synth_small, tmp_path):
    """`mura-ens train` twice with one seed (shuffling, augmentation, parallel decode): the same bytes."""
    args = ["--plugin", "custom_cnn", "--data", synth_small["root"], "--epochs", "2", "--image-size", "32"]
    args += ["--param", "cells=2", "--param", "starting_filters=4", "--batch-size", "8", "--seed", "1", "-q"]
    for name in ("a", "b"):
        proc = subprocess.run(
            [MURA_ENS, "train", *args, "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    for file in ("model.onnx", "evaluation.json"):
        name = "custom_cnn-32-f4-c2-e2-bs8-s1-wc-aug"  # named after its parameters (training/run_names.py)
        first = (tmp_path / "a" / name / file).read_bytes()
        assert first == (tmp_path / "b" / name / file).read_bytes(), file
