"""The manifest: the one table everything downstream reads.

Columns (DESIGN.md): ``path``, ``study``, ``patient``, ``body_part``,
``label``, ``split`` (optional on input). In memory, a frame with exactly
``MANIFEST_COLUMNS``: strings everywhere (``""`` for unknown, never NA) except
``label``, a nullable ``Int64`` (1 abnormal, 0 normal, ``<NA>`` unknown);
``path`` is absolute. On disk: CSV, UTF-8, header row, an unknown label is an
empty cell; relative paths are relative to the manifest's folder. A path that is
not valid UTF-8 is written and read as its bytes (``surrogateescape``, see
:mod:`mura_ens.io`), so a manifest of such a folder reads back to the same files.

Row numbers in validation messages count lines of the CSV file with the
header as row 1, so the first data row is row 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..constants import BODY_PARTS, MANIFEST_COLUMNS, REQUIRED_MANIFEST_COLUMNS, SPLITS
from ..errors import ManifestError, UsageError
from ..io import TEXT_ERRORS, OutputError, atomic_write_csv, check_output_file, refuse_input_as_output
from .layout import SKIPPED_COLUMNS, ScanResult, manifest_frame, skipped_frame, unknown_parts, walk_mura
from .official import IMAGES_CSV, OFFICIAL_SPLITS, STUDIES_CSV, find_official_csvs, read_official

SKIPPED_NAME = "skipped.csv"
ROW_CONVENTION = "row numbers count the header as row 1"
_LABELS = {"0": 0, "1": 1, "": None}


def scan_source(
    source: str | os.PathLike, root: str | os.PathLike | None = None, *, labels: str | os.PathLike | None = None
) -> ScanResult:
    """Turn any data source into a :class:`ScanResult`.

    - a ``.csv`` manifest: :func:`read_manifest` (``skipped`` is empty);
      an official ``<split>_image_paths.csv`` / ``<split>_labeled_studies.csv``
      reads that split of the official CSVs;
    - a folder holding official CSVs (or whose ``MURA-v1.1/`` does): the
      official reader, paths resolved against ``root``;
    - any other folder: :func:`mura_ens.data.layout.walk_mura` (DICOM files
      anywhere in it included, :mod:`mura_ens.data.dicom`).

    ``labels``: a labels CSV joined onto the rows (:func:`mura_ens.data.labels.join_labels`).

    Raises :class:`UsageError` for a missing source, :class:`ManifestError`
    for an invalid manifest or labels file.
    """
    result = _scan(source, root)
    if labels is not None:
        from .labels import join_labels

        result = ScanResult(
            manifest=join_labels(result.manifest, labels), skipped=result.skipped, identifiers=result.identifiers
        )
    return result


def _scan(source: str | os.PathLike, root: str | os.PathLike | None) -> ScanResult:
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"data source not found: {source}")
    if path.is_file():
        official_split = _official_split_of(path.name)
        if official_split:
            return read_official(path.parent, root, splits=(official_split,))
        if path.suffix.lower() != ".csv":
            raise UsageError(f"data source {source} is neither a folder nor a .csv manifest")
        return ScanResult(manifest=read_manifest(path, root=root))
    for folder in (path, path / "MURA-v1.1"):
        if find_official_csvs(folder):
            return read_official(folder, root)
    if root is not None:
        raise UsageError(f"--root applies to official CSVs, and {source} holds none")
    return walk_mura(path)


def _official_split_of(name: str) -> str:
    for split in OFFICIAL_SPLITS:
        if name in (f"{split}_image_paths.csv", f"{split}_labeled_studies.csv"):
            return split
    return ""


def read_manifest(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read and validate a manifest CSV; return the in-memory manifest frame.

    Relative paths resolve against ``root``, by default the manifest's folder.
    Columns beyond ``MANIFEST_COLUMNS`` are dropped. Raises
    :class:`ManifestError` listing every problem (see :func:`validate_manifest`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"manifest not found: {path}")
    try:
        raw = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            encoding="utf-8-sig",
            encoding_errors=TEXT_ERRORS,  # a path that is not UTF-8 keeps its bytes (mura_ens.io)
        )
    except pd.errors.EmptyDataError:
        raise ManifestError(
            f"{path}", ["the file is empty (expected a header row: " + ",".join(MANIFEST_COLUMNS) + ")"]
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ManifestError(f"{path}", [f"cannot parse the CSV: {str(exc).strip().splitlines()[0]}"]) from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    base = Path(root).expanduser() if root is not None else path.parent
    problems = validate_manifest(raw, path, base=base)
    if problems:
        raise ManifestError(f"{path} ({ROW_CONVENTION})", problems)
    return _normalise(raw, base)


def validate_manifest(frame: pd.DataFrame, source: str | os.PathLike = "<manifest>", *, base=None) -> list[str]:
    """Problems in a manifest frame as read from CSV, one line each (empty list = valid).

    Checks: required columns present; non-empty ``path`` and ``study``;
    ``label`` 0, 1 or empty; ``body_part`` one of BODY_PARTS or empty
    (case-insensitive); ``split`` one of train/valid/test or empty; no path
    listed twice (after resolving against ``base``); one label and one body
    part per study. Rows are numbered as in the CSV file (header = row 1).
    ``source`` is only used in messages.
    """
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        return [
            f"{source}: missing required column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns))})"
        ]
    problems: list[str] = []
    text = {c: _as_text(frame[c]) for c in frame.columns if c in MANIFEST_COLUMNS}
    cells = {c: column.tolist() for c, column in text.items()}
    row = [i + 2 for i in range(len(frame))]
    parts = {p.upper(): p for p in BODY_PARTS}
    base = Path(base) if base is not None else Path(".")
    seen_paths: dict[str, int] = {}
    for i in range(len(frame)):
        path = cells["path"][i]
        if not path:
            problems.append(f"row {row[i]}: path is empty")
        else:
            resolved = _absolute(path, base)
            if resolved in seen_paths:
                problems.append(f"row {row[i]}: path {path!r} duplicates row {seen_paths[resolved]}")
            else:
                seen_paths[resolved] = row[i]
        if not cells["study"][i]:
            problems.append(f"row {row[i]}: study is empty")
        label = cells["label"][i]
        if label not in _LABELS:
            problems.append(f"row {row[i]}: label {label!r} is not 0, 1 or empty")
        part = cells["body_part"][i]
        if part and part.upper() not in parts:
            problems.append(f"row {row[i]}: body_part {part!r} is not one of {', '.join(BODY_PARTS)} or empty")
        if "split" in cells:
            split = cells["split"][i]
            if split and split.lower() not in SPLITS:
                problems.append(f"row {row[i]}: split {split!r} is not one of {', '.join(SPLITS)} or empty")
    problems += _study_conflicts(text, row)
    return problems


def _study_conflicts(text: dict[str, pd.Series], row: list[int]) -> list[str]:
    """Studies whose rows disagree on label or body part."""
    problems = []
    frame = pd.DataFrame({"study": text["study"], "label": text["label"], "body_part": text["body_part"].str.upper()})
    frame = frame[frame["study"] != ""]
    for column in ("label", "body_part"):
        values = frame.groupby("study", sort=False)[column].nunique()
        for study in values.index[values > 1]:
            rows = [row[i] for i in frame.index[frame["study"] == study]]
            found = sorted(set(frame.loc[frame["study"] == study, column]))
            shown = ", ".join(repr(v) for v in found)
            problems.append(f"rows {_row_list(rows)}: study {study!r} has more than one {column} ({shown})")
    return problems


def _as_text(column: pd.Series) -> pd.Series:
    """Cells as stripped strings, missing values as ``""`` (works for Int64 labels too)."""
    return column.astype("string").fillna("").str.strip().astype(str)


def _row_list(rows: list[int], limit: int = 6) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")


def _absolute(path: str, base: Path) -> str:
    expanded = os.path.expanduser(path)
    return os.path.normpath(expanded if os.path.isabs(expanded) else os.path.join(os.path.abspath(base), expanded))


def _normalise(raw: pd.DataFrame, base: Path) -> pd.DataFrame:
    """A validated raw frame -> the in-memory manifest frame."""
    parts = {p.upper(): p for p in BODY_PARTS}
    clean = {c: _as_text(raw[c]) for c in raw.columns if c in MANIFEST_COLUMNS}
    rows = {
        "path": [_absolute(p, base) for p in clean["path"]],
        "study": list(clean["study"]),
        "patient": list(clean["patient"]),
        "body_part": [parts.get(p.upper(), "") for p in clean["body_part"]],
        "label": [_LABELS[v] for v in clean["label"]],
        "split": [s.lower() for s in clean["split"]] if "split" in clean else [""] * len(raw),
    }
    return manifest_frame(pd.DataFrame(rows))


def manifest_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s ``MANIFEST_COLUMNS`` as written to a manifest CSV (labels ``0``/``1``/empty)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"manifest frame lacks column(s) {', '.join(missing)}")
    out = frame.loc[:, list(MANIFEST_COLUMNS)].copy()
    out["label"] = out["label"].astype("Int64").astype("string").fillna("")
    return out


def write_manifest(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    skipped: pd.DataFrame | None = None,
) -> tuple[Path, Path]:
    """Write ``frame`` (``MANIFEST_COLUMNS``) to ``path`` and ``skipped.csv`` beside it, atomically.

    ``skipped.csv`` (columns path, reason; the scan's study columns stay in memory) is
    always written, with only its header when nothing was skipped. Returns both paths.
    """
    path = Path(path)
    if path.name == SKIPPED_NAME:
        raise UsageError(f"the manifest cannot be named {SKIPPED_NAME}: that file is written beside it")
    skipped = (skipped_frame([]) if skipped is None else skipped).loc[:, list(SKIPPED_COLUMNS)]
    manifest_path = atomic_write_csv(path, manifest_table(frame))
    skipped_path = atomic_write_csv(path.parent / SKIPPED_NAME, skipped)
    return manifest_path, skipped_path


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Images and studies per body part and label.

    Index: the body parts present (BODY_PARTS order), ``(unknown)`` for rows
    without one, and ``all``. Columns: ``images``, ``images_normal``,
    ``images_abnormal``, ``images_unknown``, ``studies``, ``studies_normal``,
    ``studies_abnormal``, ``studies_unknown``. A study counts under the label
    of its first row.
    """
    kinds = {0: "normal", 1: "abnormal"}
    label_name = frame["label"].map(lambda v: "unknown" if pd.isna(v) else kinds[int(v)])
    part = frame["body_part"].replace("", "(unknown)")
    images = pd.DataFrame({"part": part, "label": label_name, "study": frame["study"]})
    studies = images.drop_duplicates("study")
    order = [p for p in (*BODY_PARTS, "(unknown)") if p in set(part)]
    columns = {}
    for name, table in (("images", images), ("studies", studies)):
        counts = pd.crosstab(table["part"], table["label"]) if len(table) else pd.DataFrame()
        counts = counts.reindex(index=order, columns=["normal", "abnormal", "unknown"], fill_value=0)
        columns[name] = counts.sum(axis=1)
        for kind in ("normal", "abnormal", "unknown"):
            columns[f"{name}_{kind}"] = counts[kind]
    table = pd.DataFrame(columns, index=order).astype("int64")
    table.loc["all"] = table.sum(axis=0)
    table.index.name = "body_part"
    return table


def build_manifest(
    source: str | os.PathLike,
    out: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    pseudonym_key: bytes | None = None,
) -> dict:
    """Scan ``source``, write the manifest to ``out`` (and ``skipped.csv`` beside it).

    ``labels``: a labels CSV joined onto the rows (:func:`mura_ens.data.labels.join_labels`).
    ``pseudonym_key``: patient ids (and DICOM study UIDs) replaced by keyed pseudonyms in
    both files, paths included (:mod:`mura_ens.pseudonym`): such a manifest is for sharing,
    its paths no longer name the files.

    Returns ``{"manifest": Path, "skipped_csv": Path, "n_images", "n_studies",
    "n_skipped", "skipped_reasons": {reason: count}, "summary": DataFrame,
    "unknown_parts": {folder: studies}}`` (:func:`mura_ens.data.layout.unknown_parts`).
    An ``out`` that cannot be written (a folder, below a file, no permission)
    is an :class:`~mura_ens.io.OutputError` before the scan.
    """
    outputs = (out, Path(out).parent / SKIPPED_NAME)
    refuse_input_as_output(outputs, (source, labels, root, *_source_files(source)), what="the manifest")
    _refuse_official_name(out, source)
    check_output_file(out, what="the manifest")
    if Path(out).name == SKIPPED_NAME:
        raise UsageError(f"the manifest cannot be named {SKIPPED_NAME}: that file is written beside it")
    result = scan_source(source, root=root, labels=labels)
    if pseudonym_key is not None:
        from ..pseudonym import Pseudonymizer, identifiers_of, path_roots

        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        paths = [*result.manifest["path"], *result.skipped["path"]]
        outside = [p for p in paths if not os.path.abspath(p).startswith(os.path.abspath(folder) + os.sep)]
        roots = path_roots([folder], outside, [labels] if labels is not None else [])
        ids = identifiers_of(result.manifest, result.skipped, extra=result.identifiers)
        hide = Pseudonymizer(pseudonym_key, ids, roots)
        result = ScanResult(manifest=hide.frame(result.manifest), skipped=hide.frame(result.skipped))
    manifest_path, skipped_path = write_manifest(result.manifest, out, result.skipped)
    return {
        "manifest": manifest_path,
        "skipped_csv": skipped_path,
        "n_images": len(result.manifest),
        "n_studies": int(result.manifest["study"].nunique()),
        "n_skipped": len(result.skipped),
        "skipped_reasons": {str(k): int(v) for k, v in result.skipped["reason"].value_counts().sort_index().items()},
        "summary": summarize(result.manifest),
        "unknown_parts": unknown_parts(result.manifest),
    }


def _source_files(source: str | os.PathLike) -> list[Path]:
    """The official CSVs a scan of ``source`` may read (in it, its ``MURA-v1.1/``, or beside an official CSV)."""
    path = Path(source).expanduser()
    folders = [path.parent] if path.is_file() else [path, path / "MURA-v1.1"]
    return [
        csv
        for folder in folders
        for entry in find_official_csvs(folder).values()
        for csv in entry.values()
        if csv is not None
    ]


def _refuse_official_name(out: str | os.PathLike, source: str | os.PathLike) -> None:
    """A manifest named like an official CSV (``valid_image_paths.csv``, ...) where a scan of ``source`` looks for
    them would be read as MURA's own list by every later scan of that tree: refused (one line)."""
    path = Path(out)
    official = {name.format(split=split) for split in OFFICIAL_SPLITS for name in (IMAGES_CSV, STUDIES_CSV)}
    folder = Path(source).expanduser()
    folders = [folder.parent] if folder.is_file() else [folder, folder / "MURA-v1.1"]
    if path.name in official and any(os.path.realpath(path.parent) == os.path.realpath(f) for f in folders):
        raise OutputError(
            f"the manifest {out} would be read as MURA's official {path.name} by every later scan of {source}; "
            "choose another name or folder"
        )
