"""Keyed pseudonyms for patient ids (``--pseudonymize``), so that outputs can leave the hospital.

A pseudonym is ``anon-`` + the first 16 hex digits of HMAC-SHA256(key, id)
(:func:`pseudonym`): the same id and key always give the same pseudonym, so
studies of one patient stay together and whoever holds the key can map an id
to its pseudonym again; without the key it cannot be reversed or recomputed.
The key comes from ``--pseudonym-key`` or the environment variable
:data:`PSEUDONYM_KEY_ENV` (:func:`resolve_key`); none is a one-line error.

:class:`Pseudonymizer` replaces every identifier wherever it stands as a
whole token in a text: not preceded or followed by a letter or digit, so
``patient00001`` is replaced in ``valid/XR_WRIST/patient00001/study1`` and in
the image's path, and ``12345`` in ``/export/12345/IM1`` or ``12345.dcm``,
but not inside ``A12345``. The identifiers are the patient ids of the input,
the DICOM Study Instance UIDs of study keys whatever their shape (``XR_HAND/<uid>``,
:func:`study_uid_of`), and what the DICOM headers of the input name: Patient ID,
Patient's Name (and its parts), Accession Number (:func:`identifiers_of`). Other
words of a path are not known to be identifying and stay as they are.

It also cuts the folders of this machine (:func:`path_roots`: the input folder,
the models' folder, ...) from the front of every path, so that an output names
``XR_HAND/anon-.../study1/image1.png``, never ``/home/someone/pacs/...``.

Every output is written already pseudonymized, at the point where its rows, paths
and file names are made (``score``'s tables and journal, ``heatmaps/`` through
:attr:`mura_ens.scoring.heatmaps.ExplainJob.hide`, the manifest): nothing raw is
ever on disk, so a kill at any moment leaves no raw identifier behind.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

#: Environment variable holding the pseudonym key when ``--pseudonym-key`` is not given.
PSEUDONYM_KEY_ENV = "MURA_ENS_PSEUDONYM_KEY"
PREFIX = "anon-"
#: Hex digits of the HMAC kept: 64 bits, so two ids of one data set practically never share a pseudonym.
HEX_DIGITS = 16

_RUN = re.compile(r"[^\W_]+")  # a maximal run of letters and digits
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def resolve_key(key: str | None) -> bytes:
    """``key``, else ``$MURA_ENS_PSEUDONYM_KEY``, as bytes; neither (or empty) is a :class:`UsageError`."""
    value = key if key else os.environ.get(PSEUDONYM_KEY_ENV, "")
    if not value:
        raise UsageError(
            f"--pseudonymize needs a key: --pseudonym-key KEY or the environment variable {PSEUDONYM_KEY_ENV}"
        )
    return value.encode("utf-8", "surrogateescape")


def key_for(pseudonymize: bool, key: str | None) -> bytes | None:
    """The key of ``--pseudonymize`` (:func:`resolve_key`), None without it; a key without the flag is an error."""
    if not pseudonymize:
        if key:
            raise UsageError("--pseudonym-key is only used with --pseudonymize")
        return None
    return resolve_key(key)


def pseudonym(identifier: str, key: bytes) -> str:
    """``anon-`` + 16 hex digits of HMAC-SHA256(``key``, ``identifier``)."""
    digest = hmac.new(key, identifier.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_DIGITS]


def identifiers_of(*frames: pd.DataFrame | None, extra: Iterable[str] = ()) -> set[str]:
    """The identifiers of manifest-like frames: non-empty ``patient`` values and the study UIDs of study keys
    (:func:`study_uid_of`), plus ``extra`` (what DICOM headers named: :attr:`mura_ens.data.layout.ScanResult.identifiers`)."""
    found: set[str] = {str(i).strip() for i in extra}
    for frame in frames:
        if frame is None or not len(frame):
            continue
        if "patient" in frame:
            found.update(str(v).strip() for v in frame["patient"].dropna().unique())
        if "study" in frame:
            for study in frame["study"].dropna().unique():
                found.update(piece for piece in str(study).split("/") if _UID.match(piece))
                uid = study_uid_of(str(study))
                if uid:
                    found.add(uid)
    found.discard("")
    return found


_HEADER_KEY = re.compile(r"^XR_[A-Za-z0-9_]+/(.+)$")
_MURA_TAIL = re.compile(r"(^|/)study\d+(_positive|_negative)?$")


def study_uid_of(key: str) -> str | None:
    """The StudyInstanceUID of a study key grouped from DICOM headers, ``XR_<part>/<uid>``, whatever the UID's
    shape (``1.2.840...``, ``ABC.DEF.SECRET7``, even with ``/`` or ``..``); None for a MURA key
    (``valid/XR_HAND/patient1/study1``, ``XR_HAND/patient1/study1``) or a folder key."""
    match = _HEADER_KEY.match(key)
    if match is None or _MURA_TAIL.search(key):
        return None
    return match.group(1)


def path_roots(*groups: Iterable[str | os.PathLike[str] | None]) -> list[str]:
    """The absolute folders that ``--pseudonymize`` cuts from the front of paths, so that no output names a
    folder of this machine: for each group, the deepest folder holding all of its absolute paths (each
    path's own folder when they share only ``/``). Give the input folder as a group of its own."""
    roots: set[str] = set()
    for group in groups:
        paths = [os.path.abspath(os.fspath(p)) for p in group if p is not None and os.fspath(p) != ""]
        if not paths:
            continue
        try:
            common = os.path.commonpath(paths)
        except ValueError:  # pragma: no cover - paths on different drives (Windows)
            common = os.sep
        if len(paths) == 1 and os.path.isfile(paths[0]):  # a file given alone: its folder
            common = os.path.dirname(paths[0])
        if common in (os.sep, ""):
            roots.update(os.path.dirname(p) for p in paths)
        else:
            roots.add(common)
    roots.discard(os.sep)
    roots.discard("")
    return sorted(roots, key=len, reverse=True)


class Pseudonymizer:
    """Replace known identifiers by their pseudonyms in texts, tables, rows, JSON-like objects and file names.

    ``Pseudonymizer(key, ["patient00001"]).text("valid/XR_HAND/patient00001/study1")`` is
    ``"valid/XR_HAND/anon-<16 hex>/study1"``. ``data:`` URIs (images embedded in a
    report) are left alone: their base64 text is not words.
    """

    def __init__(self, key: bytes, identifiers: Iterable[str], roots: Iterable[str] = ()):
        ids = {str(i).strip() for i in identifiers} - {""}
        # absolute folders cut from the front of paths (path_roots): longest first, so the deepest one wins
        self._roots = [
            re.compile(r"(?<![\w.~/-])" + re.escape(root.rstrip(os.sep)) + r"(/|(?![\w.~-]))")
            for root in sorted({str(r) for r in roots if str(r).strip(os.sep)}, key=len, reverse=True)
        ]
        self._names = {i: pseudonym(i, key) for i in ids}
        # identifiers that start and end with a letter or digit are found at the runs' edges;
        # the few that do not (e.g. "-12-") are replaced wherever they occur
        self._odd = sorted((i for i in ids if not (_RUN.fullmatch(i[0]) and _RUN.fullmatch(i[-1]))), key=len)[::-1]
        self._longest = max((len(i) for i in ids), default=0)
        self._memo: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._names)

    def text(self, text: str) -> str:
        """``text`` with the ``roots`` cut from its paths (``/data/in/x/y.png`` -> ``x/y.png``; a root alone
        -> ``.``) and every identifier that stands as a whole token replaced (module docstring)."""
        if not (self._names or self._roots) or not text or text.startswith("data:"):
            return text
        done = self._memo.get(text)
        if done is None:
            done = self._replace(text)
            if len(self._memo) < 1_000_000:
                self._memo[text] = done
        return done

    def _replace(self, text: str) -> str:
        for root in self._roots:
            text = root.sub(lambda m: "" if m.group(1) else ".", text)
        for odd in self._odd:
            text = text.replace(odd, self._names[odd])
        runs = [m.span() for m in _RUN.finditer(text)]
        pieces, last, k = [], 0, 0
        while k < len(runs):
            start = runs[k][0]
            match = None
            for j in range(k, len(runs)):  # the longest id that starts at run k and ends at run j
                end = runs[j][1]
                if end - start > self._longest:
                    break
                if text[start:end] in self._names:
                    match = (j, end)
            if match is None:
                k += 1
                continue
            pieces += [text[last:start], self._names[text[start : match[1]]]]
            last, k = match[1], match[0] + 1
        return "".join(pieces) + text[last:] if pieces else text

    def frame(
        self,
        frame: pd.DataFrame,
        *,
        keep: Iterable[str] = ("status", "body_part", "split"),
        only: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """A copy of ``frame`` with its text columns pseudonymized (those of ``only`` if given, never ``keep``)."""
        import pandas as pd

        out = frame.copy()
        keep, only = set(keep), set(only) if only is not None else None
        for column in out.columns:
            if column in keep or (only is not None and column not in only):
                continue
            values = out[column]
            if pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
                out[column] = values.map(lambda v: self.text(v) if isinstance(v, str) else v)
        return out

    def __call__(self, obj: Any) -> Any:
        """Pseudonymize ``obj``: a text, a DataFrame (:meth:`frame`), or dicts/lists of them (recursively).

        Dict keys are pseudonymized too; numbers, None and other objects are returned unchanged.
        """
        import pandas as pd

        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, pd.DataFrame):
            return self.frame(obj)
        if isinstance(obj, dict):
            return {self(k) if isinstance(k, str) else k: self(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self(v) for v in obj)
        if isinstance(obj, PurePath):
            return type(obj)(self.text(str(obj)))
        return obj
