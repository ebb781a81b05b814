"""Which folders ``mura-ens compare`` compares: arguments (folders, globs) -> finished run folders, and the rest skipped.

An argument is taken as it is when it exists; otherwise, when it holds a glob
character (``*``, ``?``, ``[``), it is expanded (quoted globs work as the
shell's do; hidden folders never match). Each folder is then:

- a finished run (:func:`mura_ens.run_folder.is_finished_run`): compared;
- an unfinished run or a run still being built: skipped, with the reason;
- a folder of run folders (e.g. ``runs/``): expanded one level, each subfolder judged as above
  (hidden ones are left out, except runs being built, which are named);
- anything else (a file, a missing path, a folder with no run in it): skipped, with the reason.

No TensorFlow, no ONNX Runtime: only the run-folder rule of :mod:`mura_ens.run_folder`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..run_folder import CARD_FILE, is_finished_run, is_partial_run_dir, is_run_folder

GLOB_CHARACTERS = "*?["

_UNFINISHED = f"unfinished run: no {CARD_FILE} (training stopped before the end, or is still running)"
_BUILDING = "a run still being built (or left by a killed one): not finished"


@dataclass(frozen=True)
class SkippedFolder:
    """A path given to compare that is not a finished run, and why."""

    path: str
    reason: str

    def line(self) -> str:
        """``<path>: <reason>`` (the reason alone when it already names the path)."""
        return self.reason if self.path in self.reason else f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class FoundRuns:
    """What :func:`find_run_dirs` made of the arguments: finished run folders in order, each once; the rest."""

    run_dirs: tuple[Path, ...]
    skipped: tuple[SkippedFolder, ...]


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> FoundRuns:
    """The finished run folders that ``paths`` name (folders, folders of runs, globs), and what was skipped.

    Order follows the arguments (glob matches and the runs of a folder in sorted
    order); a folder named twice (also through another spelling) is taken once.
    """
    found: dict[Path, Path] = {}
    skipped: list[SkippedFolder] = []
    for argument in paths:
        for path, reason in _expand(os.fspath(argument)):
            if reason is not None:
                skipped.append(SkippedFolder(str(path), reason))
            else:
                found.setdefault(Path(path).resolve(), Path(path))
    return FoundRuns(run_dirs=tuple(found.values()), skipped=tuple(skipped))


def _expand(text: str) -> Iterator[tuple[Path | str, str | None]]:
    """``(path, None)`` for each finished run ``text`` names, ``(path, reason)`` for each path skipped."""
    path = Path(os.path.expanduser(text))
    if os.path.lexists(path) or not any(char in text for char in GLOB_CHARACTERS):
        yield from _judge(path, expand=True)
        return
    matches = sorted(glob.glob(os.path.expanduser(text)))
    if not matches:
        yield text, "nothing matches this pattern"
    for match in matches:
        yield from _judge(Path(match), expand=True)


def _judge(path: Path, *, expand: bool) -> Iterator[tuple[Path, str | None]]:
    if not os.path.lexists(path):
        yield path, "not found"
    elif not path.is_dir():
        yield path, "a file, not a run folder"
    elif is_partial_run_dir(path):
        yield path, _BUILDING
    elif is_finished_run(path):
        yield path, None
    elif is_run_folder(path):
        yield path, _UNFINISHED
    else:
        children = _subfolders(path) if expand else []
        if not any(_holds_run(child) for child in children):
            yield path, f"not a run folder (no {CARD_FILE}" + (", and no run folder in it)" if expand else ")")
            return
        for child in children:  # a folder of runs: one level down, hidden folders only when they are runs
            if _holds_run(child) or not child.name.startswith("."):
                yield from _judge(child, expand=False)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(child for child in folder.iterdir() if child.is_dir())
    except OSError:
        return []


def _holds_run(folder: Path) -> bool:
    return is_run_folder(folder) or is_partial_run_dir(folder)
