"""``--labels CSV``: labels joined onto a scanned input (a DICOM folder has none of its own).

The labels file is a CSV with a header, a ``label`` column (1 abnormal, 0
normal, empty unknown) and one key column:

- ``study``: a study key as mura-ens writes it (``valid/XR_WRIST/patient11185/study1``,
  ``XR_HAND/1.2.840.113619...``), or, for the studies grouped by their DICOM
  header, the bare *Study Instance UID* (the last piece of the key);
- ``path``: an image path, absolute or relative to the labels file's folder;
  every image of a study must then get the same label.

A label from the file replaces the one the folder names gave (as the official
CSV label wins over the folder's); studies the file does not name keep theirs.
Rows that match nothing are counted in a progress line, not an error: a labels
file often covers more studies than one scoring run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..console import echo
from ..errors import ManifestError, UsageError
from .dicom import looks_like_uid

#: The key columns a labels file may have (exactly one of them).
LABEL_KEYS: tuple[str, ...] = ("study", "path")
_VALUES = {"0": 0, "1": 1, "": None}


def read_labels(path: str | os.PathLike[str]) -> tuple[str, dict[str, int | None]]:
    """The labels file's key column (``study`` or ``path``) and ``{key: label}``; problems are a :class:`ManifestError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"labels file not found: {path}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ManifestError(str(path), [f"cannot read the labels CSV: {str(exc).strip().splitlines()[0]}"]) from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    keys = [c for c in LABEL_KEYS if c in raw.columns]
    if "label" not in raw.columns or len(keys) != 1:
        raise ManifestError(
            str(path),
            [f"a labels file needs a label column and one of {', '.join(LABEL_KEYS)} (has: {', '.join(raw.columns)})"],
        )
    key = keys[0]
    labels: dict[str, int | None] = {}
    problems = []
    for row, (name, value) in enumerate(zip(raw[key].str.strip(), raw["label"].str.strip()), start=2):
        if key == "path" and name:
            name = _absolute(name, path.parent)
        if not name:
            problems.append(f"row {row}: {key} is empty")
        elif value not in _VALUES:
            problems.append(f"row {row}: label {value!r} is not 0, 1 or empty")
        elif name in labels and labels[name] != _VALUES[value]:
            problems.append(f"row {row}: {key} {name!r} has two labels")
        else:
            labels[name] = _VALUES[value]
    if problems:
        raise ManifestError(f"{path} (row numbers count the header as row 1)", problems)
    return key, labels


def _absolute(path: str, base: Path) -> str:
    expanded = os.path.expanduser(path)
    return os.path.normpath(expanded if os.path.isabs(expanded) else os.path.join(os.path.abspath(base), expanded))


def join_labels(manifest: pd.DataFrame, labels_path: str | os.PathLike[str]) -> pd.DataFrame:
    """A copy of ``manifest`` with the labels of ``labels_path`` applied (module docstring)."""
    key, labels = read_labels(labels_path)
    out = manifest.copy()
    if key == "path":
        keys = [[os.path.normpath(p)] for p in out["path"]]
    else:
        keys = [[s, _uid_of(s)] for s in out["study"]]
    new: list[int | None] = []
    matched: set[str] = set()
    for old, candidates in zip(out["label"].tolist(), keys):
        hit = next((k for k in candidates if k in labels), None)
        if hit is None:
            new.append(None if pd.isna(old) else int(old))
        else:
            matched.add(hit)
            new.append(labels[hit])
    out["label"] = pd.array(new, dtype="Int64")
    _check_one_label_per_study(out, labels_path)
    unmatched = len(labels) - len(matched)
    echo(
        f"labels: {len(matched)} of {len(labels)} {key} rows of {labels_path} matched the input"
        + (f" ({unmatched} match nothing)" if unmatched else "")
    )
    return out


def _uid_of(study: str) -> str:
    """The Study Instance UID a header-grouped DICOM study key ends with, else ``""``."""
    last = study.rsplit("/", 1)[-1]
    return last if looks_like_uid(last) else ""


def _check_one_label_per_study(manifest: pd.DataFrame, source: str | os.PathLike[str]) -> None:
    counts = manifest.groupby("study")["label"].nunique(dropna=False)
    mixed = counts.index[counts > 1].tolist()
    if mixed:
        shown = ", ".join(repr(s) for s in mixed[:5]) + (f" and {len(mixed) - 5} more" if len(mixed) > 5 else "")
        raise ManifestError(str(source), [f"the images of study {shown} get different labels"])
