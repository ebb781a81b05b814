"""A finished run folder read into memory: :func:`load_run` -> :class:`Run`; metrics as DataFrames.

No TensorFlow and no ONNX Runtime: a :class:`Run` holds what ``mura-ens train``
wrote as data (``card.json`` as a dict, ``history.tsv`` and ``evaluation.json``
as DataFrames) and draws its training curves with matplotlib.
:func:`metrics_table` turns any ``metrics.json``-shaped dict (a run's
evaluation, ``score``'s metrics, ``evaluate``'s result) into one DataFrame
indexed by level and body part; :func:`roc_figure` draws a scored set's ROC
curves per body part.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .run_folder import (
    CARD_FILE,
    EVALUATION_FILE,
    HISTORY_FILE,
    INT8_FILE,
    MODEL_FILE,
    ModelMetadata,
    card_metadata,
    is_unfinished_run,
    read_card,
)

if TYPE_CHECKING:  # pandas and matplotlib are imported when used
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Columns of :func:`metrics_table` (the interval bounds are split into ``_lo`` / ``_hi``).
METRIC_COLUMNS: tuple[str, ...] = (
    "n",
    "n_positive",
    "kappa",
    "kappa_lo",
    "kappa_hi",
    "auc",
    "auc_lo",
    "auc_hi",
    "accuracy",
    "sensitivity",
    "specificity",
    "n_excluded",
)
#: Metrics of ``history.tsv`` that :meth:`Run.plot_history` can draw (train and ``val_`` curves).
HISTORY_METRICS: tuple[str, ...] = ("loss", "auc", "accuracy", "kappa")
_COUNTS = ("n", "n_positive", "n_excluded")


def metrics_table(metrics: Mapping[str, Any], *, levels: Iterable[str] = ("study", "image")) -> pd.DataFrame:
    """One row per level and body part of a ``metrics.json``-shaped dict; undefined values are NaN.

    The index has two levels, ``level`` (``study`` / ``image``) and
    ``body_part`` (the parts in alphabetical order, then ``overall``); the
    columns are :data:`METRIC_COLUMNS`. Levels absent from ``metrics`` are left
    out. Works on ``score(...).metrics``, ``evaluate(...)``, a run's
    ``evaluation.json``, and one model's block of ``metrics["models"]``.

    Example: ``metrics_table(result.metrics).loc["study"]`` is the per-part study-level table.
    """
    import pandas as pd

    rows, index = [], []
    for level in levels:
        block = metrics.get(level) or {}
        groups = sorted((block.get("by_body_part") or {}).items())
        if block.get("overall") is not None:
            groups.append(("overall", block["overall"]))
        for group, values in groups:
            rows.append(_metric_row(values))
            index.append((level, group))
    frame = pd.DataFrame(
        rows,
        index=pd.MultiIndex.from_tuples(index, names=["level", "body_part"]),
        columns=list(METRIC_COLUMNS),
        dtype="float64",
    )
    return frame.astype({column: "int64" for column in _COUNTS})


def _metric_row(values: Mapping[str, Any]) -> dict[str, float]:
    row = {key: _number(values.get(key)) for key in METRIC_COLUMNS}
    for key in ("kappa", "auc"):
        interval = values.get(f"{key}_ci") or (None, None)
        row[f"{key}_lo"], row[f"{key}_hi"] = _number(interval[0]), _number(interval[1])
    for key in _COUNTS:
        row[key] = int(values.get(key) or 0)
    return row


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def roc_figure(result: Any) -> Figure:
    """The study-level ROC curves of a scoring result, one panel per body part and overall (as in report.html).

    ``result`` is what :func:`mura_ens.score` returns (labelled input: it needs
    ``result.metrics``). One line per model and a thicker black one for the
    ensemble, AUCs from ``result.metrics`` in the legends. Returns a matplotlib
    :class:`~matplotlib.figure.Figure` (shown inline in a notebook; ``fig.savefig(path)`` to keep it).
    """
    import pandas as pd

    from .report import roc_figure as draw

    if not result.metrics:
        raise UsageError("no ROC curves: the scored studies have no labels (metrics is empty)")
    studies = result.studies
    labelled = studies[pd.to_numeric(studies["label"], errors="coerce").notna()]
    return draw(labelled, [model.name for model in result.models], result.metrics)


@dataclass(frozen=True, repr=False)
class Run:
    """A finished run folder (``mura-ens train`` output) as data; made by :func:`load_run`.

    Attributes
    ----------
    path : Path
        The run folder.
    card : dict
        ``card.json``: config, data, training, metrics on val and test, export, versions.
    metadata : ModelMetadata
        What ``model.onnx`` says about itself: plugin, model name, body parts, input size, threshold.
    history : DataFrame
        ``history.tsv``, one row per epoch: ``epoch``, ``loss``, ``auc``, ``accuracy``, ``kappa``,
        their ``val_`` twins, ``lr``, ``seconds`` (undefined values NaN).
    evaluation : DataFrame
        ``evaluation.json`` (the test fold, else the validation fold: :attr:`evaluated_on`) as
        :func:`metrics_table`: rows by level (study, image) and body part.
    """

    path: Path
    card: dict[str, Any]
    metadata: ModelMetadata
    history: pd.DataFrame
    evaluation: pd.DataFrame
    evaluated_on: str | None = None

    @property
    def name(self) -> str:
        """The run name (the folder's name; ``prob__<name>`` in scoring tables)."""
        return self.path.name

    @property
    def plugin(self) -> str:
        """The plugin that was trained (``specialists`` for a family member)."""
        return str(self.card.get("plugin") or self.metadata.plugin)

    @property
    def body_parts(self) -> tuple[str, ...]:
        """The body parts the model serves; ``()`` for a generalist."""
        return self.metadata.body_parts

    @property
    def model_path(self) -> Path:
        """``model.onnx`` of the run."""
        return self.path / MODEL_FILE

    @property
    def int8_path(self) -> Path | None:
        """``model.int8.onnx`` when the run was quantized (``export(..., quantize="int8")``), else None."""
        path = self.path / INT8_FILE
        return path if path.is_file() else None

    def best_epoch(self) -> pd.Series:
        """The :attr:`history` row of the epoch whose weights were kept (lowest ``val_loss``).

        The epoch is the card's ``training.best_epoch`` when recorded, else the
        row with the lowest ``val_loss``.
        """
        history = self.history
        if history.empty:
            raise UsageError(f"{self.path / HISTORY_FILE} records no epoch")
        epoch = (self.card.get("training") or {}).get("best_epoch")
        rows = history[history["epoch"] == epoch] if epoch is not None else history.iloc[:0]
        if rows.empty:
            losses = history["val_loss"]
            rows = history.loc[[losses.idxmin()]] if losses.notna().any() else history.iloc[[-1]]
        row = rows.iloc[0].astype(object)  # epoch stays a whole number beside the float metrics
        row["epoch"] = int(row["epoch"])
        return row

    def plot_history(self, ax: Axes | None = None, *, metric: str = "loss") -> Axes:
        """Draw ``metric`` per epoch, train and validation, with the best epoch marked; return the axes.

        ``metric``: one of :data:`HISTORY_METRICS`. Without ``ax`` a new
        pyplot figure is made (shown inline in a notebook); pass axes to draw
        runs side by side, e.g. ``fig, axes = plt.subplots(1, 2)``.
        """
        if metric not in HISTORY_METRICS:
            raise UsageError(f"unknown history metric {metric!r}; choose one of {', '.join(HISTORY_METRICS)}")
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
        history = self.history
        ax.plot(history["epoch"], history[metric], marker="o", label=f"train {metric}")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label=f"val {metric}")
        if not history.empty:
            ax.axvline(int(self.best_epoch()["epoch"]), color="0.5", ls=":", label="best epoch")
        ax.set_title(self.name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(frameon=False)
        return ax

    def __repr__(self) -> str:
        parts = ",".join(self.body_parts) or "all"
        shown = ""
        rows = self.evaluation.reset_index()
        study = rows[(rows["level"] == "study") & (rows["body_part"] == "overall")]
        if not study.empty:
            kappa, auc = study[["kappa", "auc"]].to_numpy(dtype=float)[0]
            shown = f", {self.evaluated_on or 'test'} study kappa {_fmt(kappa)} auc {_fmt(auc)}"
        return f"Run({str(self.path)!r}, plugin={self.plugin!r}, body_parts={parts}, epochs={len(self.history)}{shown})"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def load_run(path: str | os.PathLike) -> Run:
    """Read a finished run folder (``card.json`` present): card, metadata, history and evaluation.

    ``path`` is the run folder (or a file in it, e.g. its ``model.onnx``).
    Raises a one-line :class:`~mura_ens.errors.UsageError` for a missing
    folder, a folder that is not a run, and an unfinished run (no
    ``card.json``: training stopped before the end, or is still running).
    """
    path = Path(path)
    if path.is_file() and path.parent.joinpath(CARD_FILE).is_file():
        path = path.parent
    if not path.exists():
        raise UsageError(f"run folder not found: {path}")
    if not path.is_dir():
        raise UsageError(f"not a mura-ens run folder: {path} is a file")
    if is_unfinished_run(path):
        raise UsageError(
            f"{path} is an unfinished run (no {CARD_FILE}: training stopped before the end, or is still running)"
        )
    card = read_card(path)
    evaluation = _read_json(path / EVALUATION_FILE)
    return Run(
        path=path.absolute(),
        card=card,
        metadata=card_metadata(card, run_dir=path),
        history=read_history_frame(path / HISTORY_FILE),
        evaluation=metrics_table(evaluation),
        evaluated_on=evaluation.get("split") or card.get("evaluated_on"),
    )


def read_history_frame(path: str | os.PathLike) -> pd.DataFrame:
    """``history.tsv`` as a DataFrame (``epoch`` int, the rest float, empty cells NaN); no file = no rows."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        columns = ["epoch", *HISTORY_METRICS, *(f"val_{m}" for m in HISTORY_METRICS), "lr", "seconds"]
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "epoch" else "float64") for c in columns})
    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    try:
        if "epoch" not in frame.columns:
            raise ValueError(f"no epoch column (columns: {', '.join(map(str, frame.columns[:5])) or 'none'})")
        return frame.astype({c: "int64" if c == "epoch" else "float64" for c in frame.columns})
    except (ValueError, TypeError) as exc:  # garbage: said, never silently 0 epochs
        raise UsageError(
            f"{path} is not a training history ({' '.join(str(exc).split())[:200]}): the file is damaged; "
            "the run's card.json and model are unaffected"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    return data if isinstance(data, dict) else {}
