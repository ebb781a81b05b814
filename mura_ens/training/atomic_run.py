"""Atomic run folders: a run is built in a hidden sibling folder and renamed into place when finished (no TF).

The life of one run of ``mura-ens train`` (:func:`building_run`):

1. its final name is chosen (:func:`choose_run_name`): ``<out>/<name>``, else ``<name>-2``, ``-3``, ...;
   a name is taken when a non-empty folder (or a file) has it or a live training process is building it;
2. the run is built in ``<out>/.<final name>.partial-<pid>/`` (:func:`partial_name`), which holds a marker
   :data:`MARKER_FILE` (pid, host, start time, final name, the fingerprint of the configuration);
3. once ``model.onnx`` has passed its parity check and ``card.json`` is written (last, atomically), the
   folder is renamed to ``<out>/<final name>`` (:meth:`PartialRun.commit`: one ``rename``, atomic on one
   file system) and the marker removed;
4. a run that fails (an error, Ctrl-C) is deleted, so nothing of it is left (with ``MURA_ENS_DEBUG=1`` it
   is kept, and its path printed, for inspection). A run killed outright (``kill -9``, power loss) leaves
   only its hidden partial folder: it has no ``card.json``, so ``score --models`` skips it and ``export``
   refuses it. The next ``mura-ens train`` with the same ``--out`` **cleans** (deletes) the stale partial
   folders of the *same configuration* whose process is gone (:func:`clean_stale_partials`); it does not
   resume them (a resumed fit would not be the seeded run its card describes). Partial folders of other
   configurations, of processes still running or of other hosts are left alone.

With ``--overwrite`` (``replace=True``) the run keeps its name: the new run and the folder already there are
swapped in one step (``renameat2(RENAME_EXCHANGE)`` on Linux: at every moment one whole run is visible), and the
old one, now in the hidden folder, deleted. Where the file system cannot swap, the old run is moved aside to
``.<name>.replaced.partial-<pid>`` (which no reader takes for a finished run) just before the rename and
deleted after it; a process killed between those two renames leaves both hidden, and the next ``train`` or
``score --models`` puts the right one back (:func:`mura_ens.run_folder.recover_replaced_runs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import console
from ..constants import DEBUG_ENV
from ..errors import RunFailed, UsageError
from ..io import atomic_write_json
from ..run_folder import (
    CARD_FILE,
    PARTIAL_INFIX,
    PARTIAL_MARKER,
    REPLACED_SUFFIX,
    parse_partial_name,
    pid_running,
    recover_replaced_runs,
)

#: The marker inside a partial folder: who builds it, for which final name and configuration.
MARKER_FILE = PARTIAL_MARKER


def partial_name(final_name: str, pid: int) -> str:
    """The hidden folder name a run to be called ``final_name`` is built in by process ``pid``."""
    return f".{final_name}{PARTIAL_INFIX}{int(pid)}"


def fingerprint(text: str) -> str:
    """SHA-256 of a configuration's text (the trainer passes what every worker of a cluster agrees on)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_run_name(name: str) -> None:
    """A run name is a plain, visible folder name."""
    if not name or any(ch in name for ch in "/\\") or name in (".", "..") or name.startswith("."):
        raise UsageError(f"bad run name {name!r}: it must be a plain folder name (not starting with '.')")


def choose_run_name(out: Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3``, ... when that is a file, a non-empty folder or claimed by
    a live partial folder (another ``train`` building a run of that name); nothing is created."""
    check_run_name(name)
    candidate, number = out / name, 1
    while _taken(candidate):
        number += 1
        candidate = out / f"{name}-{number}"
    return candidate


def _taken(candidate: Path) -> bool:
    if candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        return True
    if not candidate.parent.is_dir():
        return False
    prefix = f".{candidate.name}{PARTIAL_INFIX}"
    for entry in candidate.parent.iterdir():
        parsed = parse_partial_name(entry.name)
        if entry.name.startswith(prefix) and parsed and parsed[0] == candidate.name:
            if _process_alive(_read_marker(entry), pid=parsed[1]):
                return True
    return False


def _read_marker(folder: Path) -> dict:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _process_alive(marker: dict, *, pid: int) -> bool:
    """Whether the process that built a partial folder may still run (unknown counts as alive)."""
    if marker.get("host", socket.gethostname()) != socket.gethostname():
        return True  # another machine's run (a shared file system): we cannot tell
    return pid_running(pid)


def clean_stale_partials(out: Path, config_fingerprint: str) -> list[Path]:
    """Delete the partial folders under ``out`` of this configuration whose process is gone; return them."""
    removed: list[Path] = []
    if not out.is_dir():
        return removed
    for entry in sorted(out.iterdir()):
        parsed = parse_partial_name(entry.name)
        if parsed is None or not entry.is_dir() or entry.is_symlink():
            continue
        marker = _read_marker(entry)
        if marker.get("fingerprint") != config_fingerprint or _process_alive(marker, pid=parsed[1]):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


@dataclass
class PartialRun:
    """A run being built: files go to ``work``; :meth:`commit` moves it to ``final``."""

    final: Path
    work: Path
    committed: bool = False
    replace: bool = False  # --overwrite: ``final`` may hold a run, replaced at commit

    @property
    def name(self) -> str:
        """The run's name (the final folder's), used in the ONNX metadata and the card."""
        return self.final.name

    def commit(self) -> Path:
        """Rename ``work`` to ``final`` (``card.json`` must be written); return ``final``.

        With ``replace``, a folder already at ``final`` is moved aside first and deleted afterwards.
        """
        if not (self.work / CARD_FILE).is_file():
            raise RuntimeError(f"{self.work} has no {CARD_FILE}: a run is committed only once its card is written")
        if self.replace and os.path.lexists(self.final):
            return self._commit_replacing()
        try:
            os.rename(self.work, self.final)  # replaces an empty folder of that name on POSIX
        except OSError:
            if not (self.final.is_dir() and not any(self.final.iterdir())):
                raise RunFailed(
                    f"{self.final} appeared while this run was trained; the finished run is kept in {self.work} "
                    "(rename it by hand)"
                ) from None
            self.final.rmdir()
            os.rename(self.work, self.final)
        self.committed = True
        with contextlib.suppress(OSError):
            (self.final / MARKER_FILE).unlink()
        _sync_folder(self.final.parent)
        return self.final

    def _commit_replacing(self) -> Path:
        """``work`` and ``final`` swapped in one step and the old run deleted; where the file system cannot
        swap, ``final`` moved aside, ``work`` renamed to ``final`` (the old run put back if that fails), then
        the old run deleted."""
        if exchange_folders(self.work, self.final):
            self.committed = True
            with contextlib.suppress(OSError):
                (self.final / MARKER_FILE).unlink()
            _sync_folder(self.final.parent)
            shutil.rmtree(self.work, ignore_errors=True)  # the old run, now under the hidden name
            return self.final
        aside = self.final.with_name(partial_name(f"{self.final.name}{REPLACED_SUFFIX}", os.getpid()))
        if os.path.lexists(aside):
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(self.final, aside)
        try:
            os.rename(self.work, self.final)
        except OSError:
            os.rename(aside, self.final)  # put the old run back
            raise
        self.committed = True
        with contextlib.suppress(OSError):
            (self.final / MARKER_FILE).unlink()
        _sync_folder(self.final.parent)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                aside.unlink()
        return self.final


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    the system or the file system cannot (then nothing was changed)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl < 1.2.?)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that a rename in it survives a power loss (POSIX only; best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def building_run(
    out: Path,
    name: str,
    *,
    config_fingerprint: str,
    echo: Callable[[str], None] | None = None,
    replace: bool = False,
) -> Iterator[PartialRun]:
    """Build one run under ``out`` (see the module docstring); yields the :class:`PartialRun`.

    Stale partial folders of the same configuration are deleted first (and said, through ``echo``).
    ``replace`` (``--overwrite``): the run is called ``name`` even when a folder of that name exists, and
    replaces it at :meth:`PartialRun.commit`.
    Leaving the block without :meth:`PartialRun.commit` deletes the partial folder, unless
    ``MURA_ENS_DEBUG`` is set and the block raised (then its path is said and it is kept).
    """
    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for line in recover_replaced_runs(out):  # an --overwrite killed between its renames: its run back in view
        if echo:
            echo(line)
    for stale in clean_stale_partials(out, config_fingerprint):
        if echo:
            echo(f"removed {stale.name}: an unfinished run of this configuration whose process is gone")
    if replace:
        check_run_name(name)
    final = out / name if replace else choose_run_name(out, name)
    work = out / partial_name(final.name, os.getpid())
    if work.exists():  # left by an earlier failed run of this process (kept for debugging)
        shutil.rmtree(work)
    work.mkdir()
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "final_name": final.name}
    atomic_write_json(work / MARKER_FILE, {**marker, "fingerprint": config_fingerprint})
    run = PartialRun(final=final, work=work, replace=replace)
    try:
        yield run
    except BaseException:
        if not run.committed:
            _discard(run, keep=os.environ.get(DEBUG_ENV, "") not in ("", "0"), made_out=made_out)
        raise
    if not run.committed:
        _discard(run, keep=False, made_out=made_out)


def _discard(run: PartialRun, *, keep: bool, made_out: bool) -> None:
    """Delete an unfinished run (and ``out`` when this run made it and it is left empty)."""
    if keep:
        console.echo(f"mura-ens: the unfinished run is kept in {run.work} ({DEBUG_ENV} is set)")
        return
    shutil.rmtree(run.work, ignore_errors=True)
    if made_out:
        with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
            run.work.parent.rmdir()
