"""Fitting from a ``score`` output folder: read its ``studies.csv`` and the models it was scored with.

The members and their sha256 come from ``SCORED_DIR/models.json``, which
``score`` writes: ``{"precision", "tta", "models": [{"name", "sha256", ...}]}``
(a bare list of records, from older folders, is read too, with precision and TTA unknown).
The ensemble is bound to the models that produced the probabilities, whatever
a models folder holds today. ``--models DIR`` / ``--model FILE`` only
cross-check: each model given must be a recorded member with the same sha256,
and with ``--models DIR`` every member must be there; a mismatch is a one-line
:class:`UsageError` naming the model. The caller loads the models given
(:func:`mura_ens.scoring.models.load_models`) and passes them in: fitting imports
nothing from scoring.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ScoredModels:
    """What ``models.json`` says: the members, and how they scored (None = not recorded)."""

    members: list[Member]
    precision: str | None = None
    tta: str | None = None


def read_models_json(scored_dir: str | os.PathLike) -> ScoredModels:
    """The members of a scored folder, with precision and TTA, from its ``models.json``."""
    record = Path(scored_dir) / MODELS_FILE
    if not record.is_file():
        raise UsageError(
            f"{scored_dir} does not record the models it was scored with (no {MODELS_FILE}): "
            "score it again with this version of mura-ens score"
        )
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        items = data["models"] if isinstance(data, dict) else data
        members = [Member(str(m["name"]), str(m["sha256"])) for m in items]
        how = data if isinstance(data, dict) else {}
        precision, tta = how.get("precision"), how.get("tta")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read models from {record}: {type(exc).__name__} {exc}") from None
    if not members:
        raise UsageError(f"{record} lists no models")
    return ScoredModels(members, _text_or_none(precision), _text_or_none(tta))


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def cross_check(members: Sequence[Member], given: Sequence[Any], *, whole_folder: bool, scored_dir: Path) -> None:
    """Refuse (one line naming the model) given models that are not the recorded members."""
    recorded = {m.name: m.sha256 for m in members}
    for model in given:
        if model.name not in recorded:
            raise UsageError(
                f"model {model.name} ({model.path}) was not used to score {scored_dir} (see {MODELS_FILE})"
            )
        if model.sha256 != recorded[model.name]:
            raise UsageError(
                f"model {model.name} ({model.path}) differs from the one {scored_dir} was scored with: "
                f"sha256 {model.sha256[:12]} now, {recorded[model.name][:12]} in {MODELS_FILE}"
            )
    found = {m.name for m in given}
    missing = [name for name in recorded if name not in found]
    if whole_folder and missing:
        raise UsageError(f"model {missing[0]}, which {scored_dir} was scored with, is not in the --models folder")


def scored_members(
    scored_dir: str | os.PathLike,
    given_models: Sequence[Any] | None = None,
    *,
    whole_folder: bool = False,
) -> ScoredModels:
    """The members of a scored folder (``models.json``), cross-checked against any models given.

    ``given_models``: model records with ``name``, ``sha256`` and ``path``, loaded by the
    caller (:func:`mura_ens.scoring.models.load_models`); ``whole_folder``: they are a whole
    ``--models`` folder, so every recorded member must be among them (:func:`cross_check`).
    """
    scored = read_models_json(scored_dir)
    if given_models is not None:
        cross_check(scored.members, given_models, whole_folder=whole_folder, scored_dir=Path(scored_dir))
    return scored


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
    given_models: Sequence[Any] | None = None,
    whole_folder: bool = False,
    threshold_from_metrics: bool = True,
) -> FittedEnsemble:
    """Fit an ensemble on ``SCORED_DIR/studies.csv`` (what ``mura-ens fit-ensemble`` runs).

    With ``threshold_from_metrics`` the plain mean is judged at the threshold
    ``score`` used (``metrics.json``'s ``threshold``, when there is one)
    instead of ``settings.plain_threshold``.
    The members, their sha256, the precision and the TTA come from ``models.json``
    (models given are only cross-checked, see the module doc and :func:`scored_members`:
    the caller loads them, e.g. ``load_models(models_dir, model_files)``, and passes
    ``whole_folder=models_dir is not None``); a member without a column in
    ``studies.csv`` is refused.
    """
    from dataclasses import replace

    scored_dir = Path(scored_dir)
    if not scored_dir.is_dir():
        raise UsageError(f"scored folder not found: {scored_dir}")
    studies = read_studies(scored_dir / STUDIES_FILE)
    scored = scored_members(scored_dir, given_models, whole_folder=whole_folder)
    members = scored.members
    unscored = [m.name for m in members if m.column not in studies.columns]
    if unscored:
        raise UsageError(
            f"model(s) {', '.join(unscored)} have no {PROB_PREFIX}<model> column in {scored_dir / STUDIES_FILE}: "
            f"{MODELS_FILE} does not match {STUDIES_FILE}"
        )
    settings = settings or FitSettings()
    if threshold_from_metrics:
        settings = replace(settings, plain_threshold=plain_threshold(scored_dir, settings.plain_threshold))
    try:
        return fit_ensemble(studies, members, settings, precision=scored.precision, tta=scored.tta)
    except UsageError as exc:
        raise UsageError(f"{scored_dir / STUDIES_FILE}: {exc}") from None
