"""Keras callbacks of a training run: per-epoch log + progress line, atomic best checkpoint.

Imports Keras at module level: import this module only inside functions.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text
from .history import HISTORY_COLUMNS, history_tsv, progress_line
from .tf_runtime import import_tensorflow

tf, keras = import_tensorflow()
# Keras is untyped here (no stubs): its base class is taken as an Any-typed name mypy can subclass.
_Callback: Any = keras.callbacks.Callback


class EpochLog(_Callback):
    """Appends one row per epoch, rewrites ``history.tsv`` atomically and echoes a progress line.

    A run killed mid-way still leaves the curve data of its finished epochs.
    ``on_first_epoch()`` runs after epoch 1, when the input pipeline has met
    every image once (the trainer reports dropped images there).
    """

    def __init__(self, path: Path, epochs: int, *, echo: Callable[[str], None] | None = None, on_first_epoch=None):
        super().__init__()
        self.path = Path(path)
        self.epochs = epochs
        self.echo = echo
        self.on_first_epoch = on_first_epoch
        self.rows: list[dict] = []
        self.best = math.inf
        self._start = 0.0
        self._lr = math.nan

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._lr = _current_lr(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {key: _as_float(logs.get(key)) for key in HISTORY_COLUMNS if key not in ("epoch", "lr", "seconds")}
        row.update(epoch=epoch + 1, lr=self._lr, seconds=time.perf_counter() - self._start)
        self.rows.append(row)
        val_loss = row.get("val_loss")
        improved = val_loss is not None and math.isfinite(val_loss) and val_loss < self.best
        if improved and val_loss is not None:
            self.best = val_loss
        atomic_write_text(self.path, history_tsv(self.rows))
        if epoch == 0 and self.on_first_epoch is not None:
            self.on_first_epoch()
        if self.echo is not None:
            self.echo(progress_line(row, self.epochs, best=improved))


class BestCheckpoint(_Callback):
    """Saves the whole model to ``path`` (``.keras``) whenever ``val_loss`` improves, atomically."""

    def __init__(self, path: Path, monitor: str = "val_loss"):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        value = _as_float((logs or {}).get(self.monitor))
        if value is None or not math.isfinite(value) or value >= self.best:
            return
        self.best, self.best_epoch = value, epoch + 1
        # Keras insists on the .keras suffix; write beside the target and rename.
        tmp = self.path.with_name(f".{self.path.stem}.tmp.keras")
        self.model.save(tmp)
        os.replace(tmp, self.path)


def _current_lr(model) -> float:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except Exception:
        return math.nan


def _as_float(value) -> float | None:
    """``value`` as a float; None when missing or undefined (NaN: e.g. the AUC of a one-class fold)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
