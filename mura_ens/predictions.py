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
    See :func:`mura_ens.metrics.evaluate_predictions`.

    Raises
    ------
    UsageError
        Missing or unreadable file, missing columns, bad labels or probabilities.
    """
    import pandas as pd

    from .io import read_csv_text
    from .metrics import DEFAULT_BOOTSTRAP, evaluate_predictions

    path = Path(path)
    if not path.exists():
        raise UsageError(f"predictions file not found: {path}")
    if not path.is_file():
        raise UsageError(f"predictions path is not a file: {path}")
    try:  # file names that are not UTF-8 keep their bytes (mura_ens.io)
        frame = read_csv_text(path, dtype={c: "string" for c in _TEXT_COLUMNS})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read predictions file {path}: {reason}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = drop_duplicate_rows(frame, path)
    try:
        return evaluate_predictions(
            frame, threshold=threshold, prob_col=prob_column, bootstrap=bootstrap or DEFAULT_BOOTSTRAP
        )
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from exc


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
