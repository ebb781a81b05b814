"""Keras callbacks of a training run: per-epoch log + progress line, step progress bar, atomic best checkpoint.

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


class StepProgress(_Callback):
    """A progress bar inside each epoch (steps, images/s, ETA, running loss) on stderr, removed when the epoch
    ends, where :class:`EpochLog`'s line takes its place. ``steps``: the expected steps per epoch (the pipeline
    drops unreadable images, so Keras cannot count them); ``images_per_step``: the global batch size.
    ``console``: a ``rich.console.Console`` (default: stderr; in Jupyter, rich draws it in the cell)."""

    def __init__(self, steps: int, epochs: int, images_per_step: int, *, console: Any = None):
        super().__init__()
        self.steps, self.epochs, self.images_per_step = max(1, int(steps)), epochs, images_per_step
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def on_epoch_begin(self, epoch, logs=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"),
            BarColumn(bar_width=20),  # the whole line fits 80 columns
            MofNCompleteColumn(),
            TextColumn("steps {task.fields[rate]} ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[phase]}"),
            console=self.console or Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("epoch", total=self.steps, rate="    - img/s", phase="")
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        done = batch + 1
        now = time.perf_counter()
        if done == 1:  # the rate counts from the first step's end: that step also traces and compiles the model
            self._start = now
        elapsed = max(now - self._start, 1e-9)
        rate = f"{(done - 1) * self.images_per_step / elapsed:6.1f} img/s" if done > 1 else "    - img/s"
        loss = _as_float((logs or {}).get("loss"))
        phase = f"loss {loss:.3f}" if loss is not None else ""
        total = max(self.steps, done)  # more steps than expected: the bar grows rather than overflows
        self._bar.update(self._task, completed=done, total=total, rate=rate, phase=phase)

    def on_test_begin(self, logs=None):
        if self._bar is not None:
            self._bar.update(self._task, phase="validating")

    def on_epoch_end(self, epoch, logs=None):
        self._close()

    def on_train_end(self, logs=None):
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


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
