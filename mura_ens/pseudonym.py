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
but not inside ``A12345``. The identifiers are the patient ids of the input
and the DICOM Study Instance UIDs standing in study keys
(:func:`identifiers_of`). Other words of a path (a patient's name used as a
folder name, say) are not known to be identifying and stay as they are.
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


def identifiers_of(*frames: pd.DataFrame | None) -> set[str]:
    """The identifiers of manifest-like frames: non-empty ``patient`` values, and UIDs in ``study`` keys."""
    found: set[str] = set()
    for frame in frames:
        if frame is None or not len(frame):
            continue
        if "patient" in frame:
            found.update(str(v).strip() for v in frame["patient"].dropna().unique())
        if "study" in frame:
            for study in frame["study"].dropna().unique():
                found.update(piece for piece in str(study).split("/") if _UID.match(piece))
    found.discard("")
    return found


class Pseudonymizer:
    """Replace known identifiers by their pseudonyms in texts, tables, rows, JSON-like objects and file names.

    ``Pseudonymizer(key, ["patient00001"]).text("valid/XR_HAND/patient00001/study1")`` is
    ``"valid/XR_HAND/anon-<16 hex>/study1"``. ``data:`` URIs (images embedded in a
    report) are left alone: their base64 text is not words.
    """

    def __init__(self, key: bytes, identifiers: Iterable[str]):
        ids = {str(i).strip() for i in identifiers} - {""}
        self._names = {i: pseudonym(i, key) for i in ids}
        # identifiers that start and end with a letter or digit are found at the runs' edges;
        # the few that do not (e.g. "-12-") are replaced wherever they occur
        self._odd = sorted((i for i in ids if not (_RUN.fullmatch(i[0]) and _RUN.fullmatch(i[-1]))), key=len)[::-1]
        self._longest = max((len(i) for i in ids), default=0)
        self._memo: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._names)

    def text(self, text: str) -> str:
        """``text`` with every identifier that stands as a whole token replaced (module docstring)."""
        if not self._names or not text or text.startswith("data:"):
            return text
        done = self._memo.get(text)
        if done is None:
            done = self._replace(text)
            if len(self._memo) < 1_000_000:
                self._memo[text] = done
        return done

    def _replace(self, text: str) -> str:
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


#: Columns of a CSV that :func:`hide_tree` always rewrites, even when every value looks like a number.
ID_COLUMNS = ("patient", "study", "path", "image", "png")


def hide_tree(folder: str | os.PathLike[str], hide: Pseudonymizer) -> None:
    """Pseudonymize a folder written by a step that knew nothing of pseudonyms, in place.

    Every file or folder name holding an identifier is renamed (deepest first), and
    every ``.csv`` file is rewritten with its text columns pseudonymized: the
    :data:`ID_COLUMNS` and any column with a value that is not a number (numbers,
    e.g. probabilities, are written back exactly as they were).
    """
    from .io import atomic_write_csv

    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            if name.lower().endswith(".csv"):
                path = os.path.join(dirpath, name)
                atomic_write_csv(path, _hidden_csv(path, hide))
        for name in (*filenames, *dirnames):
            new = hide.text(name)
            if new != name:
                os.replace(os.path.join(dirpath, name), os.path.join(dirpath, new))


def _hidden_csv(path: str, hide: Pseudonymizer) -> pd.DataFrame:
    from .io import read_csv_text

    frame = read_csv_text(path, dtype=str, keep_default_na=False)
    columns = [c for c in frame.columns if c in ID_COLUMNS or not _numeric(frame[c])]
    return hide.frame(frame, keep=(), only=columns)


def _numeric(values: pd.Series) -> bool:
    import pandas as pd

    present = values[values != ""]
    return bool(pd.to_numeric(present, errors="coerce").notna().all())
