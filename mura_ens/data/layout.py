"""Walk a MURA-layout folder tree into manifest rows.

``MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageN.png``

The walk may start at any depth: the root, a split folder, a body-part folder,
a patient folder or one study folder. Split, body part and patient are read
from the path components *above* each study folder, including the ancestors
of the folder the walk started from, so walking
``.../valid/XR_WRIST/patient11185/study1_positive`` still knows the split and
the body part. A symlinked start folder is read where it points.

Nothing is dropped silently: every file that does not become a manifest row is
listed in :attr:`ScanResult.skipped` with a reason (see :data:`SKIP_REASONS`).
Image files that are damaged (zero bytes, truncated) *are* manifest rows;
scoring records their status per image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from ..constants import BODY_PARTS, IMAGE_SUFFIXES, MANIFEST_COLUMNS
from .dicom import DICOMDIR_REASON, is_dicom, scan_dicom_files

#: Reasons a file or folder can be listed in ``skipped``.
SKIP_REASONS: dict[str, str] = {
    "appledouble": "macOS AppleDouble metadata file (._*), not an image",
    "hidden": "hidden file or inside a hidden folder",
    "not_an_image_suffix": "file suffix is not an image suffix (and the file is not DICOM)",
    "outside_study_folder": "image file not directly inside a studyN[_positive|_negative] folder",
    "empty_study": "study folder without any image file",
    "missing_file": "listed in a CSV but not found on disk",
    "not_in_official_csv": "image file in a study folder that the official image CSV does not list",
    "duplicate": "listed more than once",
    "symlinked_folder": "symbolic link to a folder: not followed (a loop or a copy elsewhere would count twice)",
    DICOMDIR_REASON: "DICOMDIR: the index of a DICOM medium, not an image",
}
#: Skip reasons of files that are rows after all when they are DICOM (by the preamble, whatever the name).
_MAYBE_DICOM = ("not_an_image_suffix", "outside_study_folder")

#: Columns of ``skipped.csv`` (:func:`mura_ens.data.manifest.write_manifest`).
SKIPPED_COLUMNS: tuple[str, ...] = ("path", "reason")
#: Columns a scan adds to its skipped table: the study a skipped file belongs to, as in the
#: manifest (``""`` / ``<NA>`` outside any study folder), so that nobody downstream re-parses paths.
SKIPPED_STUDY_COLUMNS: tuple[str, ...] = ("study", "patient", "body_part", "label")

_STUDY_RE = re.compile(r"^(study\d+)(?:_(positive|negative))?$", re.IGNORECASE)
#: A body-part folder: one of BODY_PARTS, or another ``XR_*`` name (an unknown body part, e.g. ``XR_KNEE``).
_PART_FOLDER_RE = re.compile(r"^XR_\w+$", re.IGNORECASE)
_PATIENT_RE = re.compile(r"^patient\d+$", re.IGNORECASE)
_SPLIT_NAMES = ("train", "valid", "test")
_PART_BY_UPPER = {part: part for part in BODY_PARTS}


@dataclass
class ScanResult:
    """What a scan of a data source found.

    ``manifest`` has exactly ``MANIFEST_COLUMNS`` (dtypes as in
    docs/INTERNALS.md); ``skipped`` has columns ``path``, ``reason`` and the
    :data:`SKIPPED_STUDY_COLUMNS` (see :func:`skipped_frame`).
    """

    manifest: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: skipped_frame([]))
    #: What the DICOM headers name that identifies a patient or examination (patient ids and names, study
    #: UIDs, accession numbers: :meth:`mura_ens.data.dicom.DicomHeader.identifiers`), for ``--pseudonymize``.
    identifiers: frozenset[str] = frozenset()


class StudyInfo(NamedTuple):
    """What a study folder's path says about it."""

    key: str
    patient: str
    body_part: str
    split: str
    label: int | None
    #: The name of an ``XR_*`` folder that is not one of the seven parts (``body_part`` is then ``""``).
    unknown_part: str = ""


def parse_study_dir(parts: Iterable[str]) -> StudyInfo | None:
    """Read split, body part, patient and label from a study folder's path components.

    ``parts`` are the components of the study folder's path, the study folder
    last. Returns ``None`` when the last component is not a study folder name
    (``studyN``, ``studyN_positive``, ``studyN_negative``). Components that
    cannot be found are empty strings and are left out of the study key.
    An ``XR_*`` folder that is not one of the seven parts (``XR_KNEE``) stands
    where a body part would: ``body_part`` is ``""``, ``unknown_part`` and the
    study key hold the folder's name (``valid/XR_KNEE/patient1/study1``).
    """
    parts = list(parts)
    if not parts:
        return None
    match = _STUDY_RE.match(parts[-1])
    if match is None:
        return None
    study_name = match.group(1).lower()
    suffix = (match.group(2) or "").lower()
    label = {"positive": 1, "negative": 0}.get(suffix)
    above = parts[:-1]

    patient = ""
    if above and (_PATIENT_RE.match(above[-1]) or (len(above) > 1 and _PART_FOLDER_RE.match(above[-2]))):
        patient = above.pop()
    body_part = unknown = ""
    if above and _PART_FOLDER_RE.match(above[-1]):
        folder = above.pop()
        body_part = _body_part(folder)
        unknown = "" if body_part else folder
    split = above[-1].lower() if above and above[-1].lower() in _SPLIT_NAMES else ""
    key = "/".join(piece for piece in (split, body_part or unknown, patient, study_name) if piece)
    return StudyInfo(key=key, patient=patient, body_part=body_part, split=split, label=label, unknown_part=unknown)


def unknown_parts(frame: pd.DataFrame) -> dict[str, int]:
    """Studies of ``frame`` (``path``, ``study``, ``body_part``) without a body part, by the ``XR_*`` folder named.

    ``{"XR_KNEE": 2, "": 1}``: two studies under an ``XR_KNEE`` folder, one
    with no body-part folder at all (e.g. a manifest row with an empty
    ``body_part``). The folder is read from the study key, else from the
    image's path. Rows without a study (files outside any study folder) are
    not studies. Empty when every study has one of the seven parts.
    """
    rows = frame.loc[(frame["body_part"] == "") & (frame["study"] != ""), ["path", "study"]]
    found: dict[str, str] = {}
    for path, study in zip(rows["path"], rows["study"]):
        if study not in found:
            named = [piece for piece in study.split("/") if _PART_FOLDER_RE.match(piece)]
            info = None if named else parse_study_dir(Path(os.path.dirname(path)).parts)
            found[study] = named[-1] if named else (info.unknown_part if info is not None else "")
    counts: dict[str, int] = {}
    for name in found.values():
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (item[0] == "", item[0])))


def unknown_parts_text(counts: dict[str, int]) -> str:
    """``3 studies of an unknown body part (XR_KNEE 2, no body-part folder 1)``, or "" when there are none."""
    if not counts:
        return ""
    total = sum(counts.values())
    shown = ", ".join(f"{name or 'no body-part folder'} {n}" for name, n in counts.items())
    return f"{total} {'study' if total == 1 else 'studies'} of an unknown body part ({shown})"


def _body_part(name: str) -> str:
    return _PART_BY_UPPER.get(name.upper(), "")


def is_image_name(name: str) -> bool:
    """True for a file name with an image suffix (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def skip_reason(name: str) -> str | None:
    """The reason a file of this name is never an image row, or ``None``."""
    if name.startswith("._"):
        return "appledouble"
    if name.startswith("."):
        return "hidden"
    if not is_image_name(name):
        return "not_an_image_suffix"
    return None


def natural_key(text: str) -> tuple:
    """Sort key that orders ``image2`` before ``image10``."""
    return tuple(int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", text))


def manifest_frame(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """A manifest frame with exactly ``MANIFEST_COLUMNS`` and their dtypes.

    ``rows`` holds dicts (or a frame) with those keys; a missing ``split``
    becomes ``""``; ``label`` may be 0, 1, ``None`` or NA.
    """
    frame = pd.DataFrame(rows if not isinstance(rows, pd.DataFrame) else rows.to_dict("records"))
    data: dict[str, Any] = {}
    for column in MANIFEST_COLUMNS:
        if column == "label":
            values = frame[column].tolist() if column in frame else [None] * len(frame)
            data[column] = pd.array([None if pd.isna(v) else int(v) for v in values], dtype="Int64")
        else:
            values = frame[column].tolist() if column in frame else [""] * len(frame)
            data[column] = pd.array(["" if pd.isna(v) else str(v) for v in values], dtype="str")
    return pd.DataFrame(data, columns=list(MANIFEST_COLUMNS))


def skipped_frame(rows: Iterable[dict], manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """A ``skipped`` frame, sorted by path: ``path``, ``reason`` and the study of each skipped file.

    A skipped file whose folder (an ``empty_study`` row: the folder itself) holds
    images of ``manifest`` takes their ``study``, ``patient``, ``body_part`` and
    ``label``; otherwise they are read from the folder's path
    (:func:`parse_study_dir`); outside any study folder they are ``""`` and ``<NA>``.
    """
    frame = pd.DataFrame(list(rows), columns=list(SKIPPED_COLUMNS)).astype("str")
    frame = frame.sort_values("path", key=lambda s: s.map(natural_key)).reset_index(drop=True)
    known: dict[str, tuple[Any, ...]] = {}
    if manifest is not None and len(manifest):
        columns = [manifest[c].tolist() for c in ("path", *SKIPPED_STUDY_COLUMNS)]
        for path, *values in zip(*columns):
            known.setdefault(os.path.dirname(path), tuple(values))
    studies: list[tuple[Any, ...]] = []
    for path, reason in zip(frame["path"], frame["reason"]):
        folder = path if reason == "empty_study" else os.path.dirname(path)
        found = known.get(folder)
        if found is None:
            info = parse_study_dir(Path(folder).parts)
            found = (info.key, info.patient, info.body_part, info.label) if info else ("", "", "", None)
        studies.append(found)
    for k, column in enumerate(SKIPPED_STUDY_COLUMNS):
        values = [row[k] for row in studies]
        if column == "label":
            frame[column] = pd.array([None if pd.isna(v) else int(v) for v in values], dtype="Int64")
        else:
            frame[column] = pd.array(values, dtype="str")
    return frame


def sort_manifest(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by study key, then image path, numbers compared as numbers."""
    studies, paths = frame["study"].tolist(), frame["path"].tolist()
    study_keys = {study: natural_key(study) for study in set(studies)}
    order = sorted(range(len(frame)), key=lambda i: (study_keys[studies[i]], natural_key(paths[i])))
    return frame.iloc[order].reset_index(drop=True)


def walk_mura(folder: str | os.PathLike) -> ScanResult:
    """Walk a MURA-layout tree from any depth into a :class:`ScanResult`.

    Labels come from the study folder names (``_positive`` 1, ``_negative`` 0,
    no suffix ``<NA>``). Files are visited in a deterministic order and rows
    are sorted by study, then path. A DICOM file (by its preamble, any name) in
    a study folder is an image of that study; anywhere else it is grouped by
    its header (:func:`mura_ens.data.dicom.scan_dicom_files`).
    """
    root = os.path.abspath(os.fspath(folder))
    real_root = os.path.realpath(root)  # a symlinked folder: read split/part/patient from where it points
    rows: list[dict] = []
    skipped: list[dict] = []
    loose_dicom: list[str] = []  # DICOM files outside study folders: grouped by their headers

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        skipped += [
            {"path": os.path.join(dirpath, d), "reason": "symlinked_folder"}
            for d in dirnames
            if os.path.islink(os.path.join(dirpath, d))
        ]
        rel = os.path.relpath(dirpath, root)
        in_hidden = rel != "." and any(piece.startswith(".") for piece in rel.split(os.sep))
        info = None if in_hidden else parse_study_dir(os.path.normpath(os.path.join(real_root, rel)).split(os.sep))
        n_images = 0
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            reason = skip_reason(name)
            if reason is None and in_hidden:
                reason = "hidden"
            if reason is None and info is None:
                reason = "outside_study_folder"
            if reason in _MAYBE_DICOM and is_dicom(path):
                if info is None:
                    loose_dicom.append(path)
                    continue
                reason = None
            if reason is not None or info is None:
                skipped.append({"path": path, "reason": reason or "outside_study_folder"})
                continue
            n_images += 1
            rows.append(
                {
                    "path": path,
                    "study": info.key,
                    "patient": info.patient,
                    "body_part": info.body_part,
                    "label": info.label,
                    "split": info.split,
                }
            )
        if info is not None:
            if n_images == 0 and not any(_STUDY_RE.match(d) for d in dirnames):
                skipped.append({"path": dirpath, "reason": "empty_study"})

    manifest = _disambiguate_keys(manifest_frame(rows), root)
    identifiers: set[str] = set()
    if loose_dicom:
        dicom_rows, dicom_skipped = scan_dicom_files(loose_dicom, root)
        identifiers.update(i for row in dicom_rows for i in row.pop("identifiers", ()))
        manifest = manifest_frame(pd.concat([manifest, manifest_frame(dicom_rows)], ignore_index=True))
        skipped += dicom_skipped
    manifest = sort_manifest(manifest)
    return ScanResult(manifest=manifest, skipped=skipped_frame(skipped, manifest), identifiers=frozenset(identifiers))


def _disambiguate_keys(manifest: pd.DataFrame, root: str) -> pd.DataFrame:
    """Give studies whose parsed keys collide a key from their folder path instead.

    Happens only outside the MURA layout (e.g. ``a/study1`` and ``b/study1``
    with no patient folder); MURA trees always give unique keys.
    """
    if manifest.empty:
        return manifest
    folders = manifest["path"].map(os.path.dirname)
    n_folders = folders.groupby(manifest["study"]).nunique()
    clashing = n_folders.index[n_folders > 1]
    if len(clashing) == 0:
        return manifest
    mask = manifest["study"].isin(clashing)
    base = os.path.dirname(root) or root
    new_keys = folders[mask].map(lambda d: os.path.relpath(d, base).replace(os.sep, "/"))
    manifest = manifest.copy()
    manifest.loc[mask, "study"] = new_keys
    return manifest
