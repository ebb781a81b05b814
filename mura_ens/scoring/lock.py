"""One scoring run per output folder: an exclusive lock on ``--out`` for the life of a run.

The lock is ``fcntl.flock`` (Linux and macOS) on ``<out>/.mura-ens.lock``,
a small text file naming its holder (PID, host, start time). The kernel drops
a ``flock`` when its process dies however it dies (``kill -9`` included), so:

- a second run on the same folder finds the lock held and stops at once with
  a :class:`~mura_ens.errors.UsageError` naming the other run's PID, before it
  loads a model, scans the input or touches the first run's journal;
- a lock file left behind by a run that died (``kill -9``, power loss) is
  stale: the next run gets the ``flock``, notes whose it was, and takes it over.

On a file system without ``flock`` (some network mounts: ``ENOLCK``,
``EOPNOTSUPP``) the file's PID is checked instead: a live process on this host
holds it, and so does any process of another host (it cannot be checked from
here: the message says to delete the file if that run is gone); anything else
is stale. The file is removed when the run ends, so a
finished output folder holds only its outputs. The holder re-checks after
locking that the file it locked is still the one at the path (a run that ends
removes it), so two runs never both believe they hold it.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from ..errors import UsageError
from ..io import make_output_dir

LOCK_FILE = ".mura-ens.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP))
_ATTEMPTS = 5


class OutputLocked(UsageError):
    """Another run holds the output folder's lock. ``pid`` is its process id (None when unknown)."""

    def __init__(self, out: Path, holder: dict[str, str]):
        self.pid = int(holder["pid"]) if holder.get("pid", "").isdigit() else None
        who = f"PID {self.pid}" if self.pid is not None else "PID unknown"
        elsewhere = bool(holder.get("host")) and holder["host"] != socket.gethostname()
        if elsewhere:
            who += f" on {holder['host']}"
        if holder.get("started"):
            who += f", started {holder['started']}"
        hint = f" (if that run is gone, delete {out / LOCK_FILE})" if elsewhere else ""
        super().__init__(
            f"another mura-ens score run ({who}) is writing to {out}; wait for it to end or choose another --out" + hint
        )


class OutputLock:
    """The lock of one output folder; :meth:`acquire` it, :meth:`release` it (or use ``with``).

    ``notes`` says what the user should know (a stale lock taken over).
    ``acquire`` creates the folder; ``release`` removes the lock file and, when
    this lock created the folder and nothing else was written to it, the folder.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.notes: list[str] = []
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> OutputLock:
        """Create ``out`` if needed and take its lock; :class:`OutputLocked` when another run holds it."""
        self._created = not self.out.exists()
        make_output_dir(self.out, what="--out")
        for _ in range(_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                previous = _read_holder(fd)
                if not _lock(fd, self.out, previous):
                    continue  # the file was replaced while we locked it: try the new one
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._note_stale(previous)
            _write_holder(fd)
            return self
        raise UsageError(f"cannot lock {self.path}: it keeps changing (another run starting and ending?)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._created:
            try:
                os.rmdir(self.out)  # only when empty: a run that stopped before writing anything
            except OSError:
                pass

    def _note_stale(self, previous: dict[str, str]) -> None:
        pid = previous.get("pid", "")
        if pid and pid != str(os.getpid()):
            started = f", started {previous['started']}" if previous.get("started") else ""
            self.notes.append(
                f"took over a stale lock in {self.out}: its run (PID {pid}{started}) is no longer running"
            )


def _lock(fd: int, out: Path, previous: dict[str, str]) -> bool:
    """Take the lock on ``fd``: True when held, False when the file at the path is no longer this one."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - not Linux or macOS
        _check_pid(out, previous)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputLocked(out, _read_holder(fd) or previous) from None
        if exc.errno not in _NO_FLOCK:
            raise UsageError(f"cannot lock {out / LOCK_FILE}: {exc.strerror or exc}") from None
        _check_pid(out, previous)
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(out / LOCK_FILE))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
    return same


def _check_pid(out: Path, holder: dict[str, str]) -> None:
    """No ``flock`` here: refuse when the file names a live process of this host, or any of another host."""
    pid = holder.get("pid", "")
    if not pid.isdigit() or int(pid) == os.getpid():
        return
    if holder.get("host") not in ("", None, socket.gethostname()):
        raise OutputLocked(out, holder)  # a process of another machine cannot be checked from here
    if os.name == "nt":  # pragma: no cover - os.kill would end the process there; only Linux and macOS are locked
        return
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, another user's
    raise OutputLocked(out, holder)


def _read_holder(fd: int) -> dict[str, str]:
    """The ``key=value`` lines of the lock file (empty when it is new or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return {}
    pairs = (line.partition("=") for line in text.splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def _write_holder(fd: int) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    text = f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\ncommand=mura-ens score\n"
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode("utf-8"))
