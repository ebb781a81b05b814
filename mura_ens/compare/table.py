"""Several finished runs side by side, as data: :func:`compare_runs` -> :class:`Comparison`.

Each run is read with :func:`mura_ens.runs.load_run` (``card.json``,
``history.tsv``, ``evaluation.json`` through :mod:`mura_ens.run_folder`); a
folder that is not a finished run, or cannot be read, is skipped with its
reason (:class:`~mura_ens.compare.collect.SkippedFolder`). The comparison
holds the runs' training curves, their test metrics exactly as each
``evaluation.json`` has them, the parameters that differ between runs
(``card.json`` ``config`` flattened, :func:`flatten_config`) and the best value
per metric column. No TensorFlow, no ONNX Runtime, no figures (``page.py`` draws).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import UsageError
from ..runs import METRIC_COLUMNS, Run, load_run
from .collect import SkippedFolder, find_run_dirs

#: Metrics ``--metric`` may choose (higher is better for each).
COMPARED_METRICS: tuple[str, ...] = ("kappa", "auc", "accuracy")
#: Curves drawn per run, train and validation (``history.tsv`` columns and their ``val_`` twins).
CURVE_METRICS: tuple[str, ...] = ("loss", "auc", "kappa")
#: Whether a column's best value is its largest (``max``) or smallest (``min``).
BEST_DIRECTION: Mapping[str, str] = {"kappa": "max", "auc": "max", "accuracy": "max", "loss": "min"}
#: Shown for a parameter a run does not have (e.g. another plugin's hyper-parameter).
MISSING = "—"
#: ``config`` keys left out of the differing parameters: where images were cached changes no result.
IGNORED_CONFIG_KEYS: frozenset[str] = frozenset({"cache"})
_LEADING_KEYS = ("plugin", "base", "body_parts", "image_size")


class NoRunToCompare(UsageError):
    """None of the paths given is a readable finished run; ``skipped`` says why for each."""

    def __init__(self, skipped: Sequence[SkippedFolder]):
        self.skipped = tuple(skipped)
        shown = f" ({len(self.skipped)} path(s) skipped)" if self.skipped else ""
        super().__init__(f"no finished run to compare{shown}: give run folders written by 'mura-ens train'")


@dataclass(frozen=True)
class Comparison:
    """Finished runs side by side; made by :func:`compare_runs`.

    Attributes
    ----------
    names : tuple of str
        One unique display name per run (the folder name; its parent's too when two runs share one).
    runs : tuple of Run
        The runs, in the order given.
    metric : str
        The metric shown first (one of :data:`COMPARED_METRICS`).
    overview : DataFrame
        One row per run (index: name): ``plugin``, ``body_parts``, ``input_size``, ``epochs_run``,
        ``best_epoch``, ``best_val_loss``, ``evaluated_on``, ``path``.
    parameters : DataFrame
        Only the parameters whose values differ between runs (index: name; columns in
        :func:`flatten_config` order), as display text; :data:`MISSING` where a run has no such key.
    curves : DataFrame
        Long format: ``run``, ``epoch``, ``metric`` (:data:`CURVE_METRICS`), ``fold`` (``train``/``val``), ``value``.
    metrics : DataFrame
        The runs' ``evaluation.json`` (:func:`mura_ens.runs.metrics_table` rows), index
        ``(run, level, body_part)``, columns :data:`mura_ens.runs.METRIC_COLUMNS`; undefined = NaN.
    best : DataFrame
        Index ``(level, body_part)``, columns :data:`COMPARED_METRICS`: the best value over the
        runs (:data:`BEST_DIRECTION`); NaN where fewer than two runs have a value.
    notes : tuple of str
        Why some numbers may not compare (different test folds or data).
    skipped : tuple of SkippedFolder
        Paths that were not compared, with the reason.
    """

    names: tuple[str, ...]
    runs: tuple[Run, ...]
    metric: str
    overview: pd.DataFrame
    parameters: pd.DataFrame
    curves: pd.DataFrame
    metrics: pd.DataFrame
    best: pd.DataFrame
    notes: tuple[str, ...]
    skipped: tuple[SkippedFolder, ...]

    def groups(self, level: str) -> list[str]:
        """``overall`` then the body parts (alphabetical) that any run has metrics for at ``level``."""
        if self.metrics.empty or level not in self.metrics.index.get_level_values("level"):
            return []
        present = set(self.metrics.xs(level, level="level").index.get_level_values("body_part"))
        return (["overall"] if "overall" in present else []) + sorted(present - {"overall"})

    def cell(self, name: str, level: str, group: str) -> pd.Series | None:
        """The metrics row of run ``name`` at ``level`` and ``group`` (a body part or ``overall``), or None."""
        key = (name, level, group)
        if key not in self.metrics.index:
            return None
        row = self.metrics.xs(key)
        return row if isinstance(row, pd.Series) else None

    def is_best(self, level: str, group: str, column: str, value: float) -> bool:
        """Whether ``value`` is the best of ``column`` at ``level``/``group`` (ties are all best)."""
        key = (level, group)
        if column not in self.best.columns or key not in self.best.index or _undefined(value):
            return False
        best = _float(self.best.at[key, column])
        return not math.isnan(best) and math.isclose(float(value), best, rel_tol=0.0, abs_tol=1e-12)


def compare_runs(run_dirs: Iterable[str | os.PathLike[str]], *, metric: str = "kappa") -> Comparison:
    """Read the finished runs that ``run_dirs`` name (run folders, folders of runs, globs) into a :class:`Comparison`.

    A path that is not a finished run, or whose files cannot be read, is
    skipped (``Comparison.skipped``). Raises :class:`NoRunToCompare` (a
    :class:`~mura_ens.errors.UsageError`) when no run remains, and
    :class:`~mura_ens.errors.UsageError` for an unknown ``metric``.
    """
    if metric not in COMPARED_METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(COMPARED_METRICS)}")
    found = find_run_dirs(run_dirs)
    runs: list[Run] = []
    skipped = list(found.skipped)
    for run_dir in found.run_dirs:
        try:
            runs.append(load_run(run_dir))
        except UsageError as exc:
            skipped.append(SkippedFolder(str(run_dir), str(exc)))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # a damaged file: skip, not crash
            skipped.append(SkippedFolder(str(run_dir), f"cannot read the run's files ({type(exc).__name__}: {exc})"))
    if not runs:
        raise NoRunToCompare(skipped)
    names = display_names([run.path for run in runs])
    metrics = _metrics(names, runs)
    return Comparison(
        names=names,
        runs=tuple(runs),
        metric=metric,
        overview=_overview(names, runs),
        parameters=differing_parameters({name: flatten_config(run.card) for name, run in zip(names, runs)}),
        curves=_curves(names, runs),
        metrics=metrics,
        best=_best(metrics),
        notes=_notes(names, runs),
        skipped=tuple(skipped),
    )


def display_names(paths: Sequence[os.PathLike[str] | str]) -> tuple[str, ...]:
    """Folder names, made unique by adding parent folders where two runs share a name."""
    parts = [os.path.normpath(os.fspath(path)).split(os.sep) for path in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            return tuple(names)
        for i in grow:
            depth[i] += 1


def flatten_config(card: Mapping[str, Any]) -> dict[str, Any]:
    """A run's settings as one flat dict: ``plugin``, ``base``, ``body_parts``, ``image_size``,
    ``params.<name>`` per plugin hyper-parameter, the other ``config`` keys (epochs, lr, weights,
    init_from, ...; not :data:`IGNORED_CONFIG_KEYS`), and ``data`` (the manifest's sha256)."""
    config = dict(card.get("config") or {})
    flat: dict[str, Any] = {
        "plugin": config.get("plugin", card.get("plugin")),
        "base": config.get("base", card.get("base_plugin")),
        "body_parts": list(config.get("body_parts", card.get("body_parts")) or []),
        "image_size": config.get("image_size", card.get("input_size")),
    }
    for key, value in (config.get("params") or {}).items():
        flat[f"params.{key}"] = value
    for key, value in config.items():
        if key not in (*_LEADING_KEYS, "params") and key not in IGNORED_CONFIG_KEYS:
            flat[key] = value
    flat["data"] = (card.get("data") or {}).get("manifest_sha256")
    return flat


def differing_parameters(configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The keys of the flat ``configs`` (run name -> :func:`flatten_config`) whose values are not all equal.

    One row per run, one column per differing key (first-seen order), cells as
    display text (:func:`parameter_text`); a key a run lacks reads :data:`MISSING`.
    """
    keys = sorted(dict.fromkeys(key for config in configs.values() for key in config), key=_key_rank)
    absent = object()

    def same(key: str) -> bool:
        values = {json.dumps(c.get(key, absent), sort_keys=True, default=repr) for c in configs.values()}
        return len(values) == 1

    differing = [key for key in keys if not same(key)]
    rows = {
        name: {key: parameter_text(key, config[key]) if key in config else MISSING for key in differing}
        for name, config in configs.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=differing, dtype=object).rename_axis("run")


def _key_rank(key: str) -> int:
    """Sort rank (stable within a rank): plugin, base, body parts, size; plugin params; training settings; data."""
    if key in _LEADING_KEYS:
        return _LEADING_KEYS.index(key)
    if key.startswith("params."):
        return len(_LEADING_KEYS)
    return len(_LEADING_KEYS) + (2 if key == "data" else 1)


def parameter_text(key: str, value: Any) -> str:
    """A parameter value for display: ``none`` for None, ``all`` for no body parts, ``(empty)`` for "",
    the data hash's first 12 characters."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or ("all" if key == "body_parts" else "[]")
    if value == "":
        return "(empty)"
    if key == "data" and isinstance(value, str):
        return value[:12]
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _overview(names: Sequence[str], runs: Sequence[Run]) -> pd.DataFrame:
    rows = {}
    for name, run in zip(names, runs):
        training = run.card.get("training") or {}
        rows[name] = {
            "plugin": run.plugin,
            "body_parts": ",".join(run.body_parts) or "all",
            "input_size": run.metadata.input_size,
            "epochs_run": training.get("epochs_run", len(run.history)),
            "best_epoch": training.get("best_epoch"),
            "best_val_loss": _float(training.get("best_val_loss")),
            "evaluated_on": run.evaluated_on or "",
            "path": str(run.path),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def _curves(names: Sequence[str], runs: Sequence[Run]) -> pd.DataFrame:
    frames = []
    for name, run in zip(names, runs):
        history = run.history
        for metric in CURVE_METRICS:
            for fold, column in (("train", metric), ("val", f"val_{metric}")):
                if column in history.columns:
                    frames.append(
                        pd.DataFrame({"run": name, "epoch": history["epoch"], "metric": metric, "fold": fold}).assign(
                            value=history[column].to_numpy(dtype=float)
                        )
                    )
    columns = ["run", "epoch", "metric", "fold", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _metrics(names: Sequence[str], runs: Sequence[Run]) -> pd.DataFrame:
    frames = {name: run.evaluation for name, run in zip(names, runs) if not run.evaluation.empty}
    if not frames:
        index = pd.MultiIndex.from_tuples([], names=["run", "level", "body_part"])
        return pd.DataFrame(index=index, columns=list(METRIC_COLUMNS), dtype="float64")
    return pd.concat(frames, names=["run"])


def _best(metrics: pd.DataFrame) -> pd.DataFrame:
    values = metrics[list(COMPARED_METRICS)] if not metrics.empty else metrics.reindex(columns=COMPARED_METRICS)
    grouped = values.groupby(level=["level", "body_part"], sort=False)
    return grouped.agg(_best_of_column).astype("float64")


def _best_of_column(values: pd.Series) -> float:
    return _best_of(values, BEST_DIRECTION[str(values.name)])


def _best_of(values: pd.Series, direction: str) -> float:
    defined = values.dropna()
    if len(defined) < 2:
        return math.nan
    return float(defined.max() if direction == "max" else defined.min())


def best_value(values: Iterable[Any], column: str) -> float:
    """The best of ``values`` for ``column`` (:data:`BEST_DIRECTION`); NaN when fewer than two are defined."""
    return _best_of(pd.Series([_float(v) for v in values], dtype="float64"), BEST_DIRECTION[column])


def _notes(names: Sequence[str], runs: Sequence[Run]) -> tuple[str, ...]:
    notes = []
    folds = {name: run.evaluated_on or "unknown" for name, run in zip(names, runs)}
    if len(set(folds.values())) > 1:
        shown = ", ".join(f"{name}: {fold}" for name, fold in folds.items())
        notes.append(f"The runs were evaluated on different folds ({shown}): their metrics do not compare.")
    served = {name: ",".join(run.body_parts) for name, run in zip(names, runs) if run.body_parts}
    if served and len(served) < len(runs) or len(set(served.values())) > 1:
        shown = ", ".join(f"{name}: {parts}" for name, parts in served.items())
        notes.append(f"Some runs serve only some body parts ({shown}): their 'overall' rows cover only those studies.")
    hashes = {str((run.card.get("data") or {}).get("manifest_sha256")) for run in runs}
    if len(hashes) > 1:
        notes.append(
            "The runs were trained on different data (the manifest sha256 differs, see 'data' below): "
            "their test metrics come from different studies."
        )
    return tuple(notes)


def _float(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _undefined(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
