"""Read MURA's official CSV pairs into manifest rows.

Per split (``train``, ``valid``):

- ``<split>_image_paths.csv``: one column, image paths such as
  ``MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png``;
- ``<split>_labeled_studies.csv``: a study path with a trailing slash and a 0/1 label.

The originals have no header row; copies in the wild add one (e.g.
``Img_Path,Label``); both are accepted. Paths are resolved against ``root``
(by default the folder that holds ``MURA-v1.1/``, i.e. the CSV folder's
parent; the CSV folder itself and the working directory are tried next).
The CSV label wins over the study folder name; an image whose study is not in
the studies CSV takes its label from the folder name. Listed images missing on
disk, and files in listed study folders that the image CSV does not list, go to
``skipped``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import UsageError
from ..io import TEXT_ERRORS
from .layout import ScanResult, manifest_frame, parse_study_dir, skip_reason, skipped_frame, sort_manifest

OFFICIAL_SPLITS: tuple[str, ...] = ("train", "valid")
IMAGES_CSV = "{split}_image_paths.csv"
STUDIES_CSV = "{split}_labeled_studies.csv"

# How many listed paths to try when choosing the root the CSV paths are relative to.
_ROOT_PROBE = 25


def find_official_csvs(folder: str | os.PathLike) -> dict[str, dict[str, Path | None]]:
    """The official CSVs in ``folder``: ``{split: {"images": path|None, "studies": path|None}}``.

    Only splits with at least one of the two files are included; an empty
    dict means ``folder`` holds no official CSVs.
    """
    folder = Path(folder)
    found: dict[str, dict[str, Path | None]] = {}
    for split in OFFICIAL_SPLITS:
        images = folder / IMAGES_CSV.format(split=split)
        studies = folder / STUDIES_CSV.format(split=split)
        entry = {"images": images if images.is_file() else None, "studies": studies if studies.is_file() else None}
        if entry["images"] or entry["studies"]:
            found[split] = entry
    return found


def read_official(
    folder: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    splits: tuple[str, ...] | None = None,
) -> ScanResult:
    """Read the official CSVs in ``folder`` (optionally only some ``splits``).

    ``root`` is the folder the CSV paths are relative to; by default the
    first candidate under which the listed files exist (see the module
    docstring). Raises :class:`UsageError` when there are no official CSVs or
    their paths are not found under any candidate root.
    """
    folder = Path(folder).absolute()
    csvs = find_official_csvs(folder)
    if splits is not None:
        csvs = {split: entry for split, entry in csvs.items() if split in splits}
    if not csvs:
        raise UsageError(f"no official MURA CSVs ({IMAGES_CSV.format(split='train')}, ...) in {folder}")

    listed: dict[str, list[str]] = {}  # split -> image paths as written
    labelled: dict[str, list[tuple[str, int]]] = {}  # split -> (study path as written, label)
    for split, entry in csvs.items():
        labelled[split] = read_studies_csv(entry["studies"]) if entry["studies"] is not None else []
        listed[split] = read_images_csv(entry["images"]) if entry["images"] is not None else []

    probe = [p for paths in listed.values() for p in paths[:_ROOT_PROBE]]
    probe += [study for pairs in labelled.values() for study, _ in pairs[:_ROOT_PROBE]]
    base = _choose_root(folder, root, probe)
    labels = {_resolve(base, study): label for pairs in labelled.values() for study, label in pairs}

    listings = _Listings()
    rows: list[dict] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for split, entry in csvs.items():
        paths = listed[split]
        if entry["images"] is None:  # studies CSV only: the images are whatever the study folders hold
            paths = []
            for study, _ in labelled[split]:
                names = listings.names(_resolve(base, study)) or set()
                paths += [f"{_norm(study)}/{name}" for name in sorted(names) if skip_reason(name) is None]
        for written in paths:
            path = _resolve(base, written)
            reason = "duplicate" if path in seen else None
            seen.add(path)
            directory, name = os.path.split(path)
            if reason is None and name not in (listings.names(directory) or ()):
                reason = "missing_file"
            if reason is not None:
                skipped.append({"path": path, "reason": reason})
            else:
                rows.append(_image_row(path, written, split, labels))
    skipped += listings.unlisted(seen)
    manifest = sort_manifest(manifest_frame(rows))
    return ScanResult(manifest=manifest, skipped=skipped_frame(skipped, manifest))


class _Listings:
    """``os.listdir`` of each folder visited, read once (None for a folder that cannot be listed)."""

    def __init__(self) -> None:
        self.by_folder: dict[str, set[str] | None] = {}

    def names(self, directory: str) -> set[str] | None:
        if directory not in self.by_folder:
            try:
                self.by_folder[directory] = set(os.listdir(directory))
            except OSError:
                self.by_folder[directory] = None
        return self.by_folder[directory]

    def unlisted(self, seen: set[str]) -> list[dict]:
        """Files sitting in the visited study folders that the image CSV does not list."""
        found = []
        for directory, names in self.by_folder.items():
            for name in sorted(names or ()):
                path = os.path.join(directory, name)
                if path not in seen and os.path.isfile(path):
                    found.append({"path": path, "reason": skip_reason(name) or "not_in_official_csv"})
        return found


def _image_row(path: str, written: str, split: str, labels: dict[str, int]) -> dict:
    """The manifest row of a listed image found on disk; the studies CSV's label wins over the folder's."""
    directory = os.path.dirname(path)
    info = parse_study_dir(directory.split(os.sep))
    label = labels.get(directory, info.label if info is not None else None)
    if info is None:
        key, patient, body_part = _norm(os.path.dirname(_norm(written))), "", ""
    else:
        key, patient, body_part = info.key, info.patient, info.body_part
        if not info.split:  # the path lacks the split folder; the CSV name says it
            key = f"{split}/{key}"
    return {"path": path, "study": key, "patient": patient, "body_part": body_part, "label": label, "split": split}


def read_images_csv(path: str | os.PathLike) -> list[str]:
    """Image paths from a ``*_image_paths.csv``, with or without a header row."""
    rows = _read_rows(path)
    if rows and not _looks_like_path(rows[0][0]):
        rows = rows[1:]
    return [row[0].strip() for row in rows if row and row[0].strip()]


def read_studies_csv(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``(study path, label)`` pairs from a ``*_labeled_studies.csv``, header or not."""
    rows = _read_rows(path)
    if rows and (len(rows[0]) < 2 or rows[0][1].strip() not in ("0", "1")):
        rows = rows[1:]
    pairs = []
    for row in rows:
        if not row or not row[0].strip():
            continue
        label = row[1].strip() if len(row) > 1 else ""
        if label not in ("0", "1"):
            raise UsageError(f"{path}: label {label!r} of {row[0]!r} is not 0 or 1")
        pairs.append((row[0].strip(), int(label)))
    return pairs


def _read_rows(path: str | os.PathLike) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig", errors=TEXT_ERRORS) as fh:
            return [row for row in csv.reader(fh) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read official CSV {path}: {exc}") from exc


def _looks_like_path(cell: str) -> bool:
    cell = cell.strip()
    return "/" in cell or "\\" in cell or os.path.splitext(cell)[1].lower() in (".png", ".jpg", ".jpeg")


def _norm(written: str) -> str:
    """A CSV path with forward slashes and no trailing slash."""
    return written.strip().replace("\\", "/").rstrip("/")


def _resolve(base: str, written: str) -> str:
    return os.path.normpath(os.path.join(base, _norm(written)))


def _choose_root(folder: Path, root: str | os.PathLike | None, probe: list[str]) -> str:
    """The folder that the CSV paths are relative to."""
    if root is not None:
        candidates = [Path(root).absolute()]
        if not candidates[0].is_dir():
            raise UsageError(f"--root {root} is not a folder")
    else:
        candidates = list(dict.fromkeys([folder.parent, folder, Path.cwd()]))
    if not probe:
        return str(candidates[0])
    best, best_hits = None, 0
    for candidate in candidates:
        hits = sum(os.path.exists(_resolve(str(candidate), p)) for p in probe)
        if hits > best_hits:
            best, best_hits = candidate, hits
    if best is None:
        tried = ", ".join(str(c) for c in candidates)
        raise UsageError(
            f"the paths in the official CSVs of {folder} (e.g. {probe[0]!r}) are not found under {tried}; "
            "pass --root DIR, the folder that holds MURA-v1.1/"
        )
    return str(best)
