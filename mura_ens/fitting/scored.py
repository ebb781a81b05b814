"""Fitting from a ``score`` output folder: read its ``studies.csv`` and find its models' sha256.

Where the sha256 comes from, first match wins:

1. the models given by the caller (``--models DIR`` / ``--model FILE``, read
   with :func:`mura_ens.scoring.models.load_models`, names made unique the
   same way ``score`` does);
2. ``SCORED_DIR/models.json``, when a ``score`` output has one: a list of
   model records (or ``{"models": [...]}``) each with at least ``name`` and
   ``sha256`` (``ModelSpec.describe()`` has both).

``score`` writes the sha256 today only into report.html, which is not read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UsageError
from ..io import read_csv_text
from .ensemble import FittedEnsemble, Member
from .fit import fit_ensemble
from .settings import FitSettings
from .table import PROB_PREFIX

STUDIES_FILE = "studies.csv"
MODELS_FILE = "models.json"
METRICS_FILE = "metrics.json"

#: Columns read as text whatever they look like (ids such as "00012" stay intact).
_TEXT_COLUMNS = ("study", "patient", "body_part", "status", "error")


def members_from_models(models: Iterable[Any]) -> list[Member]:
    """Members from model records with ``name`` and ``sha256`` (e.g. :class:`~mura_ens.scoring.models.ModelSpec`)."""
    return [Member(str(m.name), str(m.sha256)) for m in models]


def read_studies(path: str | os.PathLike) -> pd.DataFrame:
    """A ``studies.csv`` with text keys and float probabilities; one-line :class:`UsageError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"studies table not found: {path} (is it the --out folder of `mura-ens score`?)")
    try:
        frame = read_csv_text(path, dtype={c: "string" for c in _TEXT_COLUMNS})  # keeps non-UTF-8 name bytes
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read studies table {path}: {reason}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:
        if column.startswith(PROB_PREFIX):
            try:
                frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
            except (ValueError, TypeError):
                raise UsageError(f"{path}: column {column} holds values that are not numbers") from None
    return frame


def scored_members(
    scored_dir: str | os.PathLike,
    models_dir: str | os.PathLike | None = None,
    model_files: Sequence[str | os.PathLike] = (),
) -> list[Member]:
    """The members of a scored folder with their sha256 (see the module doc for where they come from)."""
    if models_dir is not None or model_files:
        from ..scoring.models import load_models

        return members_from_models(load_models(models_dir, model_files))
    record = Path(scored_dir) / MODELS_FILE
    if not record.is_file():
        raise UsageError(
            f"{scored_dir} does not record its models' sha256 (no {MODELS_FILE}); "
            "pass --models DIR (or --model FILE) with the models it was scored with"
        )
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        items = data["models"] if isinstance(data, dict) else data
        return [Member(str(m["name"]), str(m["sha256"])) for m in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read models from {record}: {type(exc).__name__} {exc}") from None


def plain_threshold(scored_dir: str | os.PathLike, default: float = 0.5) -> float:
    """The threshold ``score`` used (``metrics.json``'s ``threshold``), else ``default``."""
    path = Path(scored_dir) / METRICS_FILE
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("threshold")
    except (OSError, ValueError, AttributeError):
        return default
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else default


def fit_scored_dir(
    scored_dir: str | os.PathLike,
    settings: FitSettings | None = None,
    *,
    models_dir: str | os.PathLike | None = None,
    model_files: Sequence[str | os.PathLike] = (),
    threshold_from_metrics: bool = True,
) -> FittedEnsemble:
    """Fit an ensemble on ``SCORED_DIR/studies.csv`` (what ``mura-ens fit-ensemble`` runs).

    With ``threshold_from_metrics`` the plain mean is judged at the threshold
    ``score`` used (``metrics.json``'s ``threshold``, when there is one)
    instead of ``settings.plain_threshold``.
    Members whose models were given but that have no column in ``studies.csv``
    are refused: the models must be the ones the folder was scored with.
    """
    from dataclasses import replace

    scored_dir = Path(scored_dir)
    if not scored_dir.is_dir():
        raise UsageError(f"scored folder not found: {scored_dir}")
    studies = read_studies(scored_dir / STUDIES_FILE)
    members = scored_members(scored_dir, models_dir, model_files)
    unscored = [m.name for m in members if m.column not in studies.columns]
    if unscored:
        raise UsageError(
            f"model(s) {', '.join(unscored)} have no {PROB_PREFIX}<model> column in {scored_dir / STUDIES_FILE}: "
            "give the models the folder was scored with"
        )
    settings = settings or FitSettings()
    if threshold_from_metrics:
        settings = replace(settings, plain_threshold=plain_threshold(scored_dir, settings.plain_threshold))
    try:
        return fit_ensemble(studies, members, settings)
    except UsageError as exc:
        raise UsageError(f"{scored_dir / STUDIES_FILE}: {exc}") from None
