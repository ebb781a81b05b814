"""Metrics of a predictions file: a labelled ``studies.csv`` / ``images.csv`` read and evaluated.

:func:`evaluate_file` is what ``mura-ens evaluate`` and :func:`mura_ens.evaluate` run;
:func:`fitted_thresholds` reads the per-part thresholds of an ``ensemble.json``.
(Moved here from ``mura_ens/cli/evaluate.py``, which re-exports these names, so that
the Python API does not import the CLI.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:  # pandas and metrics (scikit-learn) are imported only when called
    import pandas as pd

    from .metrics import BootstrapSettings, PartThresholds

#: Columns read as text whatever they look like (ids such as "00012" stay intact).
_TEXT_COLUMNS = ("path", "study", "patient", "body_part", "status", "error", "split")


class DuplicateRowsWarning(UserWarning):
    """A predictions file listed a study (or an image) more than once, in identical copies: each counted once."""


def evaluate_file(
    path: str | Path,
    *,
    threshold: float | PartThresholds = 0.5,
    prob_column: str = "prob",
    bootstrap: BootstrapSettings | None = None,
    companions: bool = True,
) -> dict[str, Any]:
    """Metrics (the ``metrics.json`` structure) of a predictions CSV.

    The CSV needs ``study``, ``body_part``, ``label`` and ``prob_column``.
    With a ``path`` column its rows are images (``images.csv``): image rows
    whose ``status`` is not ``ok`` are unscored, and studies get the mean of
    their image probabilities. Otherwise its rows are studies
    (``studies.csv``); studies with an empty probability are excluded.
    A study row (an image row: same ``path``) listed more than once is counted
    once when the copies are identical (a :class:`DuplicateRowsWarning` says
    how many were dropped) and refused when they differ.
    ``bootstrap`` defaults to :data:`mura_ens.metrics.DEFAULT_BOOTSTRAP`;
    ``threshold`` may be a fitted ensemble's per-part thresholds
    (:func:`fitted_thresholds`).
    For the ensemble column ``prob`` of a scoring run's output, the same sections as
    ``score``'s ``metrics.json`` (``companions``, default True): the image level from the
    ``images.csv`` beside a ``studies.csv``, ``models`` from its ``prob__<model>`` columns
    (each judged on the body parts ``models.json`` beside it says the model serves, else on
    the parts where its column has values) and, with per-part thresholds (a fitted
    ensemble), the plain ``body_part`` mean of those columns under ``baselines``.
    See :func:`mura_ens.metrics.evaluate_predictions`.

    Raises
    ------
    UsageError
        Missing or unreadable file, missing columns, bad labels or probabilities.
    """
    from .metrics import DEFAULT_BOOTSTRAP, evaluate_predictions
    from .metrics import PartThresholds as _PartThresholds

    path = Path(path)
    if not path.exists():
        raise UsageError(f"predictions file not found: {path}")
    if not path.is_file():
        raise UsageError(f"predictions path is not a file: {path}")
    frame = drop_duplicate_rows(_read_predictions(path), path)
    options: dict[str, Any] = {}
    if companions and prob_column == "prob":
        options = _scored_sections(frame, path, per_part=isinstance(threshold, _PartThresholds))
    try:
        return evaluate_predictions(
            frame, threshold=threshold, prob_col=prob_column, bootstrap=bootstrap or DEFAULT_BOOTSTRAP, **options
        )
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from exc


def _read_predictions(path: Path) -> pd.DataFrame:
    import pandas as pd

    from .io import read_csv_text

    try:  # file names that are not UTF-8 keep their bytes (mura_ens.io)
        frame = read_csv_text(path, dtype={c: "string" for c in _TEXT_COLUMNS})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read predictions file {path}: {reason}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


#: A scoring run's files read beside a ``studies.csv`` (:func:`evaluate_file`).
IMAGES_FILE, MODELS_FILE = "images.csv", "models.json"
#: The column of the plain ``body_part`` mean computed beside a fitted ensemble (never written).
_PLAIN_MEAN = "baseline__body_part"


def _scored_sections(frame: pd.DataFrame, path: Path, *, per_part: bool) -> dict[str, Any]:
    """``images``, ``models`` and ``baselines`` for :func:`~mura_ens.metrics.evaluate_predictions`: what
    a scoring run's folder adds to its ``studies.csv`` (or its ``images.csv``), as far as the files tell.
    ``frame`` gains the baseline column in place."""
    from .metrics import ModelColumn

    columns = [c for c in frame.columns if str(c).startswith("prob__")]
    served = _served_parts(path.parent / MODELS_FILE)
    models = []
    for column in columns:
        name = column.removeprefix("prob__")
        parts = served.get(name)
        if parts is None:  # no models.json: the parts where the column has values (a specialist's)
            known = frame.loc[frame[column].notna(), "body_part"].dropna().astype(str)
            everywhere = set(known) == set(frame["body_part"].dropna().astype(str))
            parts = () if everywhere else tuple(sorted(set(known)))
        models.append(ModelColumn(name, column, parts))
    images = None
    beside = path.parent / IMAGES_FILE
    if "path" not in frame.columns and beside.is_file() and beside != path:
        images = drop_duplicate_rows(_read_predictions(beside), beside)
        if not {"study", "body_part", "label", "prob", *columns} <= set(images.columns):
            images = None
    baselines: tuple = ()
    if per_part and models:
        for table in (frame, images):
            if table is not None:
                table[_PLAIN_MEAN] = _plain_mean(table, models)
        baselines = (ModelColumn("body_part", _PLAIN_MEAN),)
    return {"images": images, "models": models or None, "baselines": baselines}


def _served_parts(models_json: Path) -> dict[str, tuple[str, ...]]:
    """Model name -> the body parts it serves (empty: all), from a scoring run's ``models.json``."""
    import json

    try:
        entries = json.loads(models_json.read_text(encoding="utf-8")).get("models", [])
        return {str(m["name"]): tuple(m.get("body_parts") or ()) for m in entries}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _plain_mean(table: pd.DataFrame, models: list) -> pd.Series:
    """Per row, the mean of the columns of the models that serve its body part (the ``body_part`` ensemble)."""
    import pandas as pd

    values = table[[m.column for m in models]].apply(pd.to_numeric, errors="coerce")
    parts = table["body_part"].astype("string").fillna("")
    serves = pd.DataFrame(
        {m.column: parts.isin(m.body_parts) if m.body_parts else True for m in models}, index=table.index
    )
    return values.where(serves.astype(bool)).mean(axis=1, skipna=True)


def drop_duplicate_rows(frame: pd.DataFrame, source: str | Path = "<predictions>") -> pd.DataFrame:
    """``frame`` with each study (image rows: each ``path``) once; see :func:`evaluate_file`.

    Identical copies are dropped with one :class:`DuplicateRowsWarning`;
    copies that differ are a :class:`UsageError` naming the first such key and
    its rows (the header is row 1).
    """
    import warnings

    key = "path" if "path" in frame.columns else "study"
    if key not in frame.columns:
        return frame  # evaluate_predictions names the missing column
    keys = frame[key].astype("string")
    repeated = keys.duplicated(keep=False) & keys.notna()
    if not repeated.any():
        return frame
    what = "image" if key == "path" else "study"
    for value, group in frame.loc[repeated].groupby(keys[repeated], sort=False):
        if len(group.astype("string").drop_duplicates()) > 1:
            rows = ", ".join(str(i + 2) for i in group.index[:6])
            raise UsageError(
                f"{source}: {what} {value!r} is listed {len(group)} times with different values "
                f"(rows {rows}; the header is row 1): keep one row per {what}"
            )
    dropped = frame.loc[repeated, key].duplicated(keep="first")
    n_keys = int(keys[repeated].nunique())
    warnings.warn(
        f"{source}: {int(dropped.sum())} duplicated {what} rows dropped: {n_keys} {what}(s) were listed more than "
        f"once in identical copies (e.g. {keys[repeated].iloc[0]!r}); each is counted once",
        DuplicateRowsWarning,
        stacklevel=2,
    )
    return frame.drop(index=dropped.index[dropped.to_numpy()])


def fitted_thresholds(ensemble_file: str | Path) -> PartThresholds:
    """The per-part thresholds of an ``ensemble.json`` (what ``score --ensemble fitted`` predicted with)."""
    from .fitting.ensemble import FittedEnsemble
    from .metrics import PartThresholds

    fitted = FittedEnsemble.load(ensemble_file)
    return PartThresholds({part: model.threshold for part, model in fitted.parts.items()}, fitted.global_threshold)
