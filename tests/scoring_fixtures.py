"""Shared helpers of the scoring tests (tests/test_scoring_*.py): tiny models and small MURA trees.

No TensorFlow anywhere: the models come from tests/fixtures/make_tiny_models.py.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

_SCRIPT = Path(__file__).parent / "fixtures" / "make_tiny_models.py"
_spec = importlib.util.spec_from_file_location("make_tiny_models", _SCRIPT)
tiny = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_tiny_models", tiny)  # dataclasses look their module up there
_spec.loader.exec_module(tiny)

TINY = {s.name: s for s in tiny.STANDARD}


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Save ``pixels`` (H, W) grayscale or (H, W, 3) RGB uint8 as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def random_image(rng: np.random.Generator, *, rgb: bool = False) -> np.ndarray:
    """A small noise image of random size and brightness (so models see different means)."""
    h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
    low = int(rng.integers(0, 150))
    shape = (h, w, 3) if rgb else (h, w)
    return rng.integers(low, low + 100, size=shape, dtype=np.uint8)


def study_folder(root: Path, split: str, part: str, patient: int, study: int, label: int | None) -> Path:
    """``root/MURA-v1.1/<split>/<part>/patientNNNNN/studyK_<positive|negative>``."""
    suffix = {1: "_positive", 0: "_negative", None: ""}[label]
    return root / "MURA-v1.1" / split / part / f"patient{patient:05d}" / f"study{study}{suffix}"


def make_tree(root: Path, layout: list[tuple[str, int, int]], *, seed: int = 0) -> Path:
    """Write a valid-split MURA tree: ``layout`` = [(part, label, n_images), ...], one patient per study.

    Returns the ``MURA-v1.1/valid`` folder.
    """
    rng = np.random.default_rng(seed)
    for k, (part, label, n_images) in enumerate(layout):
        folder = study_folder(root, "valid", part, 11000 + k, 1, label)
        for j in range(1, n_images + 1):
            write_png(folder / f"image{j}.png", random_image(rng, rgb=bool((k + j) % 2)))
    return root / "MURA-v1.1" / "valid"


#: The tree of the ensemble tests: hands (specialist spec_hand), wrists (spec_elbow_wrist), shoulders (none).
ENSEMBLE_LAYOUT = [
    ("XR_HAND", 1, 3),
    ("XR_HAND", 0, 2),
    ("XR_HAND", 1, 1),
    ("XR_HAND", 0, 2),
    ("XR_WRIST", 0, 2),
    ("XR_WRIST", 1, 2),
    ("XR_WRIST", 1, 3),
    ("XR_SHOULDER", 1, 1),
    ("XR_SHOULDER", 0, 3),
    ("XR_SHOULDER", 0, 2),
]


def expected_prob(path: str, spec) -> float:
    """What tiny model ``spec`` (a TinySpec) must output for the image at ``path``, in float64."""
    from mura_ens.data.images import decode, resize_rgb

    pixels = resize_rgb(decode(path), spec.input_size, "stretch").astype(np.float64)
    return 1.0 / (1.0 + math.exp(-(spec.a * pixels.mean() / 255.0 + spec.b)))


def _read(path: Path, int_columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={c: "Int64" for c in int_columns})
    for column in frame.columns:
        if column.startswith("prob"):
            frame[column] = frame[column].astype("float64")
        elif column not in int_columns and frame[column].dtype != "int64":
            frame[column] = frame[column].astype("str").where(frame[column].notna(), "")
    return frame


def read_images(out: Path) -> pd.DataFrame:
    """images.csv as written: labels nullable Int64, empty text as ""."""
    return _read(out / "images.csv", ("label",))


def read_studies(out: Path) -> pd.DataFrame:
    """studies.csv as written: labels and predictions nullable Int64."""
    return _read(out / "studies.csv", ("label", "pred"))


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 grayscale PNG whose header (with a valid CRC) claims ``width`` x ``height`` pixels."""
    write_png(path, np.zeros((1, 1), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 8] = width.to_bytes(4, "big")
    data[ihdr + 8 : ihdr + 12] = height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def interrupt_after(monkeypatch, n_batches: int) -> None:
    """Make the run stop like Ctrl-C right after its n-th journalled batch (``monkeypatch``: pytest's)."""
    from mura_ens.scoring import journal as journal_module

    real = journal_module.Journal.append

    def append(self, number, rows):
        real(self, number, rows)
        self.count = getattr(self, "count", 0) + 1
        if self.count >= n_batches:
            raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.Journal, "append", append)


def journal_lines(out: Path) -> list[bytes]:
    """The journalled batches of an unfinished ``score`` run in ``out`` (one line each)."""
    from mura_ens.scoring import journal as journal_module

    path = out / journal_module.JOURNAL_DIR / journal_module.ROWS_FILE
    return path.read_bytes().splitlines() if path.exists() else []


def kill_9_once_journalled(command: list[str], out: Path, n_batches: int, *, timeout_s: float = 90) -> None:
    """Start ``command`` (a ``score`` run writing to ``out``), SIGKILL it once ``n_batches`` are journalled."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while len(journal_lines(out)) < n_batches:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the run journalled nothing in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
