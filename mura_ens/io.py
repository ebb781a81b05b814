"""Atomic file writes: write to a temp file in the same folder, fsync, rename.

A reader (or a resumed run) therefore sees either the old file or the new
one, never half of one.

**Paths that are not valid UTF-8.** Python holds the undecodable bytes of a
file name as lone surrogates U+DC80..U+DCFF (PEP 383, ``os.fsdecode``). Text
files (CSV, HTML) are written as UTF-8 with ``errors="surrogateescape"``, so
such a name is written as its original bytes; JSON files escape it as
``\\udcXX`` (``ensure_ascii``). Read either back with Python's
``surrogateescape`` (:data:`TEXT_ERRORS`: ``open(..., encoding="utf-8",
errors="surrogateescape")``, ``pandas.read_csv(..., encoding_errors="surrogateescape")``,
``json.load``) and ``os.fsencode(path)`` gives the file's bytes back. A file
whose names are all valid UTF-8 is plain UTF-8, byte for byte as before.

An output that cannot be created (a folder under ``/proc``, below a regular
file, a file name that is an existing folder, no permission, a full disk) is an
:class:`OutputError`: a one-line :class:`~mura_ens.errors.UsageError` that is
also an ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UsageError

#: How text outputs encode the undecodable bytes of a file name (and how readers should decode them).
TEXT_ERRORS = "surrogateescape"


class OutputError(UsageError, OSError):
    """An output file or folder that cannot be created or written (one line, exit 2 in the CLI)."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which races with threads.
_FILE_MODE = 0o666 & ~_read_umask()


def _reason(exc: OSError, path: Path) -> str:
    """Why ``path`` cannot be created, in words (a file in the way is named)."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        for parent in (path, *path.parents):
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    return f"{parent} is a file, not a folder"
                break
    return exc.strerror or str(exc) or type(exc).__name__


def _create_dir(path: Path) -> None:
    """Create ``path`` (parents too) and check a file can be made in it; ``OSError`` when not."""
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".mura-ens-probe.", dir=path)
    os.close(fd)
    os.unlink(probe)


def make_output_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) and check that files can be written in it.

    Raises :class:`OutputError` naming ``what`` and the reason when it cannot be.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    try:
        _create_dir(path)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {_reason(exc, path)}") from None
    return path


def check_output_file(path: str | os.PathLike, *, what: str = "output file") -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is created).

    Raises :class:`OutputError` when ``path`` is a folder or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    try:
        _create_dir(path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc, path.parent)}") from None
    return path


#: ``errno`` values of an output that cannot be written for a reason of the disk, not of the program:
#: full (``ENOSPC``), over quota (``EDQUOT``), read-only (``EROFS``), no permission (``EACCES``, ``EPERM``).
WRITE_ERRNOS: frozenset[int] = frozenset(
    code
    for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM)
    if code is not None
)


def check_writable_folder(path: str | os.PathLike, *, what: str = "--out") -> None:
    """Check, creating nothing, that the folder ``path`` exists and is writable or can be made: its nearest
    existing folder must be writable. A read-only file system or a folder without write permission is an
    :class:`OutputError` (``cannot create --out X: /mnt/ro is on a read-only file system``)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            return  # a file in the way: the callers' own checks name it
        read_only = False
        with contextlib.suppress(OSError, AttributeError):
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        if read_only:
            raise OutputError(f"cannot create {what} {path}: {folder} is on a read-only file system")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create {what} {path}: no permission to write in {folder}")
        return


def refuse_input_as_output(
    outputs: Iterable[str | os.PathLike | None],
    inputs: Iterable[str | os.PathLike | None],
    *,
    what: str = "--out",
) -> None:
    """Refuse, before any work, an output path that is, or resolves to, a path the command reads.

    Every command that writes a file or folder calls this with the paths it will
    write (``outputs``) and the files and folders it reads (``inputs``): ``manifest``
    (the manifest vs its source, the official CSVs in a source folder, ``--labels``),
    ``fit-ensemble`` (``ensemble.json`` vs ``SCORED_DIR`` and its tables, the models),
    ``score`` (``--out`` and each of its files vs the input, ``--labels``, the models,
    the ensemble file), ``train`` (``--out`` vs ``--data``, ``--cache``, ``--init-from``),
    ``compare -o``, ``evaluate -o``, ``explain-eval --out``. Paths are compared after
    resolving symlinks and ``..`` (``os.path.realpath``), and by device and inode when
    both exist (a hard link, a bind mount). ``None`` entries are ignored.

    Raises :class:`OutputError` (one line, exit 2 in the CLI): ``--out S/studies.csv is
    an input of this command; choose another path`` (``... resolves to S/studies.csv, an
    input of this command ...`` for a symlink or a ``..`` spelling).
    """
    read = [Path(i) for i in inputs if i is not None]
    for output in outputs:
        if output is None:
            continue
        for source in read:
            if _same_path(Path(output), source):
                same = os.fspath(source) == os.fspath(output)
                where = "is" if same else f"resolves to {source},"
                raise OutputError(f"{what} {output} {where} an input of this command; choose another path")


def _same_path(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


@contextlib.contextmanager
def write_errors_as_usage(what: str = "") -> Iterator[None]:
    """Inside the block, an ``OSError`` of a full, read-only or forbidden disk (:data:`WRITE_ERRNOS`) becomes one
    :class:`OutputError` line (``cannot write X: No space left on device``); other errors pass unchanged."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        line = disk_error_line(exc, what)
        if line is None:
            raise
        raise OutputError(line) from exc


def disk_error_line(exc: OSError, what: str = "") -> str | None:
    """``cannot write X: No space left on device`` (``X: Permission denied``) for an ``OSError`` of a full,
    read-only or forbidden disk; None for any other ``OSError``."""
    reason = _disk_reason(exc)
    if reason is None:
        return None
    where = exc.filename or what or "the output"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: {reason}"
    return f"cannot write {where}: {reason}"


@contextlib.contextmanager
def removed_on_failure(
    *paths: str | os.PathLike,
    always: bool = False,
    errors: tuple[type[BaseException], ...] = (BaseException,),
) -> Iterator[None]:
    """Inside the block, ``paths`` (files or folders) that did not exist when it began (any of them with
    ``always``) are deleted if the block raises one of ``errors`` (default any: an error, a full disk,
    Ctrl-C): nothing half-written is left."""
    import shutil

    targets = [Path(p) for p in paths if always or not os.path.lexists(p)]
    try:
        yield
    except errors:
        for target in targets:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    target.unlink()
        raise


#: What libraries that wrap an ``OSError`` without its errno (h5py, zipfile) still say in the text.
_DISK_TEXTS = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def _disk_reason(exc: OSError) -> str | None:
    """The reason of a full / read-only / forbidden disk in ``exc``, or None for any other OSError."""
    if exc.errno in WRITE_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    text = str(exc)
    return next((reason for reason in _DISK_TEXTS if reason in text), None)


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc, path.parent)}") from None
    try:
        fh: IO[Any] = (
            os.fdopen(fd, mode)
            if "b" in mode
            else os.fdopen(fd, mode, encoding="utf-8", errors=TEXT_ERRORS, newline="")
        )
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the permissions open() would.
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8; undecodable file-name bytes as themselves) to ``path`` atomically."""
    return _atomic(path, lambda fh: fh.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda fh: fh.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NaN written as null; ASCII, ``\\udcXX`` for undecodable bytes) atomically."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically; read it back with :func:`read_csv_text`."""
    return _atomic(path, lambda fh: frame.to_csv(fh, index=False, lineterminator="\n"), "w")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_csv_text(path: str | os.PathLike, **kwargs):
    """``pandas.read_csv`` of an output CSV: UTF-8 (BOM accepted), undecodable file-name bytes kept (surrogateescape)."""
    import pandas as pd

    kwargs.setdefault("encoding", "utf-8-sig")
    return pd.read_csv(path, encoding_errors=TEXT_ERRORS, **kwargs)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    try:  # numpy scalars
        import numpy as np

        if isinstance(obj, np.generic):
            return _nan_to_none(obj.item())
    except ImportError:  # pragma: no cover
        pass
    return obj
