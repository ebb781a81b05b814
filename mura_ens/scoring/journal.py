"""The resume journal: finished batches of studies, appended as they finish.

Layout inside ``--out``::

    .partial/fingerprint.json   what run this is (input, its manifest, the models and their hashes)
    .partial/images.jsonl       one JSON line per finished batch: {"batch": n, "rows": [...]}

Each line is written whole, flushed and fsynced before the next batch is
counted as done, so after ``kill -9`` the journal holds every finished batch
and at most one torn last line, which :func:`open_journal` drops. Floats go
through JSON's shortest round-trip repr, so journalled probabilities are
bit-identical to freshly computed ones and a resumed run writes the same
files as an uninterrupted one.

What the fingerprint covers: the input path, a digest of the scanned manifest
(every path, study, body part and label, in order), each model's name and
SHA-256, the precision, the test-time augmentation (``tta``: journalled
probabilities of ``none`` and ``flip`` never mix) and the mura-ens version. It does not hash image
contents (that would cost a full read of the data); batch size, workers and
providers may change between the interrupted run and ``--resume``, and so may
the ensemble (it is computed from the journalled per-model probabilities at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import UsageError
from ..io import atomic_write_json

JOURNAL_DIR = ".partial"
FINGERPRINT_FILE = "fingerprint.json"
ROWS_FILE = "images.jsonl"
JOURNAL_FORMAT = 1


def manifest_digest(manifest) -> str:
    """SHA-256 of the manifest rows that decide what gets scored and how it is grouped."""
    h = hashlib.sha256()
    columns = [
        manifest[c].astype("string").fillna("").to_numpy(dtype=object) for c in ("path", "study", "body_part", "label")
    ]
    for values in zip(*columns):
        h.update("\x1f".join(values).encode("utf-8", "surrogateescape"))
        h.update(b"\x1e")
    return h.hexdigest()


def run_fingerprint(
    input_path: str | os.PathLike, manifest, models: Sequence, *, precision: str, tta: str = "none"
) -> dict:
    """What identifies a run for ``--resume`` (see the module docstring)."""
    return {
        "format": JOURNAL_FORMAT,
        "input": str(Path(input_path).resolve()),
        "n_images": int(len(manifest)),
        "manifest_sha256": manifest_digest(manifest),
        "models": [{"name": m.name, "sha256": m.sha256} for m in models],
        "precision": precision,
        "tta": tta,
        "mura_ens_version": __version__,
    }


class Journal:
    """An open journal that batches are appended to; see :func:`open_journal`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.rows_path = self.folder / ROWS_FILE
        self._fh = open(self.rows_path, "ab")

    def append(self, number: int, rows: list[dict]) -> None:
        """Record one finished batch durably (write, flush, fsync)."""
        line = json.dumps({"batch": number, "rows": rows}, separators=(",", ":"), allow_nan=False)
        self._fh.write(line.encode("utf-8", "surrogateescape") + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file; the journal stays on disk for ``--resume``."""
        if not self._fh.closed:
            self._fh.close()

    def remove(self) -> None:
        """Delete the journal once the final outputs are written."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def open_journal(out: str | os.PathLike, fingerprint: dict, *, resume: bool) -> tuple[Journal, list[dict], list[str]]:
    """Open the journal in ``out`` for this run; return it, the rows already done, and notes for the user.

    With ``resume`` an existing journal of the same run (same fingerprint) is
    continued and its rows returned; one from a different run is refused with
    a :class:`UsageError` saying what differs. Without ``resume`` an existing
    journal is replaced (and a note says so).
    """
    folder = Path(out) / JOURNAL_DIR
    notes: list[str] = []
    done: list[dict] = []
    exists = (folder / FINGERPRINT_FILE).is_file()
    if resume and exists:
        stored = _read_fingerprint(folder)
        differs = [k for k in sorted(set(stored) | set(fingerprint)) if stored.get(k) != fingerprint.get(k)]
        if differs:
            raise UsageError(
                f"--resume: the unfinished run in {out} is a different run (its {', '.join(differs)} differ); "
                "rerun without --resume to start over"
            )
        done = _read_rows(folder / ROWS_FILE)
        notes.append(f"resuming: {len(done)} images already scored in {folder}")
    else:
        if exists or folder.exists():
            notes.append(
                f"replaced the unfinished run's journal in {folder} (pass --resume to continue one instead)"
                if exists
                else f"removed a stray {folder}"
            )
            shutil.rmtree(folder)
        elif resume:
            notes.append(f"--resume: nothing to resume in {out}; scoring from the start")
        folder.mkdir(parents=True)
        atomic_write_json(folder / FINGERPRINT_FILE, fingerprint)
    return Journal(folder), done, notes


def _read_fingerprint(folder: Path) -> dict:
    try:
        return json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: cannot read {folder / FINGERPRINT_FILE} ({exc}); rerun without --resume") from None


def _read_rows(path: Path) -> list[dict]:
    """Rows of every complete line; a torn last line (killed mid-write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict] = []
    good_end = 0
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break  # no newline: the write of this line never finished
        try:
            record = json.loads(data[start:end].decode("utf-8", "surrogateescape"))
            batch_rows = record["rows"]
        except (ValueError, KeyError, TypeError):
            if data.find(b"\n", end + 1) < 0 and not data[end + 1 :].strip():
                break  # garbage on the last line only: treat as torn
            raise UsageError(f"--resume: {path} is damaged before its last line; rerun without --resume") from None
        rows.extend(batch_rows)
        good_end = end + 1
        start = end + 1
    if good_end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return rows
