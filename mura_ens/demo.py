"""The whole pipeline on synthetic data: synth → train → export → score → report.

This is what ``make demo`` runs on a fresh machine. MURA itself cannot be
downloaded without registering, so the demo makes its own MURA-layout tree
(:func:`mura_ens.data.synth.make_synthetic_mura`), trains a ``custom_cnn``
generalist and ``specialists`` (one smaller ``custom_cnn`` per body part) on
its ``train`` split, exports them to ONNX (with the Keras/ONNX parity check),
and scores the synthetic ``valid`` split with the per-body-part ensemble.
Training imports TensorFlow; scoring does not.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import console
from .errors import UsageError

#: Marker file: a folder holding it was made by the demo and may be rebuilt by it.
MARKER = ".mura-ens-demo"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run. ``quick`` is the sub-2-minute variant the tests use."""

    studies_per_part: int
    image_size: int
    epochs: int
    patience: int
    specialist_epochs: int
    generalist_params: tuple[str, ...]
    specialist_params: tuple[str, ...]
    batch_size: int = 32


FULL = DemoSettings(
    studies_per_part=96,
    image_size=64,
    epochs=15,
    patience=5,
    specialist_epochs=25,
    generalist_params=("starting_filters=16", "cells=5"),
    specialist_params=("starting_filters=8", "cells=4"),
)
QUICK = DemoSettings(
    studies_per_part=20,
    image_size=48,
    epochs=2,
    patience=2,
    specialist_epochs=1,
    generalist_params=("starting_filters=8", "cells=4"),
    specialist_params=("starting_filters=4", "cells=3"),
)


@dataclass
class DemoResult:
    """Where the demo put things, what it measured and how long each step took."""

    out: Path
    data: Path
    runs: list[Path]
    results: Path
    score: object  # mura_ens.scoring.score.ScoreResult
    seconds: dict[str, float] = field(default_factory=dict)


def _prepare_out(out: Path) -> None:
    """Create ``out``, or clear an earlier demo's output there; never delete a folder the demo did not make."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise UsageError(f"--out {out} is not empty and was not made by 'mura-ens demo'; choose another folder")
        for name in ("data", "runs", "results"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by mura-ens demo; rerunning the demo rebuilds this folder\n", encoding="utf-8")


def run_demo(
    out: str | Path = "demo-out",
    *,
    quick: bool = False,
    seed: int = 0,
    echo: Callable[[str], None] | None = console.echo,
    progress: bool | None = None,
) -> DemoResult:
    """Run synth → train (custom_cnn + specialists) → export → score on ``out``; return paths and results."""
    from .data.synth import make_synthetic_mura
    from .scoring.score import ScoreSettings, score
    from .training import TrainOptions, train

    settings = QUICK if quick else FULL
    say = echo or (lambda _m: None)
    out = Path(out)
    _prepare_out(out)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    say(
        f"[1/4] synthetic MURA: {settings.studies_per_part} studies per body part, {settings.image_size} px -> {out / 'data'}"
    )
    make_synthetic_mura(
        out / "data",
        studies_per_part=settings.studies_per_part,
        size=max(64, settings.image_size),
        seed=seed,
        quirks=True,
    )
    data = out / "data" / "MURA-v1.1"
    seconds["synth"] = time.perf_counter() - t0

    runs_dir = out / "runs"
    common = TrainOptions(
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        weights="none",
        seed=seed,
        progress=echo is not None,
        patience=settings.patience,
    )
    t0 = time.perf_counter()
    say("[2/4] training custom_cnn (generalist), evaluating, exporting to ONNX")
    generalist = replace(common, epochs=settings.epochs, params=settings.generalist_params, name="custom_cnn")
    runs = train("custom_cnn", data, runs_dir, generalist)
    seconds["train_generalist"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("[3/4] training specialists (one custom_cnn per body part), exporting each")
    specialists = replace(
        common, epochs=settings.specialist_epochs, params=settings.specialist_params, base="custom_cnn"
    )
    runs += train("specialists", data, runs_dir, specialists)
    seconds["train_specialists"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"[4/4] scoring {data / 'valid'} with {len(runs)} ONNX models, ensemble body_part")
    result = score(
        data / "valid",
        out / "results",
        models_dir=runs_dir,
        settings=ScoreSettings(ensemble="body_part"),
        progress=progress,
    )
    seconds["score"] = time.perf_counter() - t0
    return DemoResult(out=out, data=data, runs=runs, results=out / "results", score=result, seconds=seconds)
