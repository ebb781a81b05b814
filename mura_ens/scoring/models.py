"""ONNX model discovery, metadata and validation: which models a run scores with.

A model is described by a :class:`ModelSpec`, a small frozen (picklable)
record built from the file alone (its protobuf read by :mod:`mura_ens.onnx.wire`,
or ``onnx.load`` for an irregular file; no session), so that it can
travel to another process or a Dask worker; sessions are made there, see
:mod:`mura_ens.scoring.sessions`. :class:`ModelSpec` and :func:`load_model_spec`
live in :mod:`mura_ens.onnx.spec` (int8 export reads models too) and are
importable from here.

Metadata (``metadata_props``, docs/INTERNALS.md) are parsed by
:meth:`mura_ens.run_folder.ModelMetadata.from_onnx_props`: ``plugin``,
``model_name``, ``body_parts`` (comma list, empty = generalist),
``input_size``, ``resize_policy``, ``threshold``, ``mura_ens_version``; int8
models add ``quantization``. Missing fields fall back: name = run-folder name
for ``model.onnx``/``model.int8.onnx`` else the file stem
(:func:`~mura_ens.run_folder.default_model_name`); input size = the static H
of the input; policy = ``stretch``; threshold = 0.5; generalist.

:func:`load_models` is what a run uses: discovery (:func:`find_model_files`;
symlinked folders followed once each, unfinished run folders skipped, see
:mod:`mura_ens.run_folder`), then each file read (:func:`load_model_spec`:
one image input with a *dynamic* batch dimension), then copies of one model
(same sha256) used once, and two different models of one name refused. Every
session is probed once when it is built (:func:`probe_model`,
:func:`mura_ens.scoring.sessions.probe_session`): a 2-image batch must give one
finite probability in [0, 1] per image.

What the caller should hear about but that does not stop a run -- unfinished
runs skipped, copies used once, folders that could not be read -- is a
:class:`ModelWarning` (``warnings.warn``; subclasses :class:`UnfinishedRunWarning`
and :class:`DuplicateModelWarning`), one line each. ``mura-ens score`` prints
warnings raised while scoring as ``mura-ens: warning: <message>``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError, UsageError
from ..onnx.spec import ModelSpec, load_model_spec
from ..run_folder import (
    CARD_FILE,
    INT8_FILE,
    INT8_SUFFIX,
    MODEL_FILE,
    is_unfinished_run,
)
from ..run_folder import default_model_name as default_model_name  # re-exported: tests

if TYPE_CHECKING:
    from .sessions import SessionConfig

PRECISIONS: tuple[str, ...] = ("fp32", "int8")


class ModelWarning(UserWarning):
    """Something about the models the user should hear about; the run goes on. One line."""


class UnfinishedRunWarning(ModelWarning):
    """Run folders skipped by discovery because they have no ``card.json`` (a run killed before it finished)."""


class DuplicateModelWarning(ModelWarning):
    """Two files holding the same model (same sha256): it is used once."""


#: How many paths a warning or error lists before "and N more".
_SHOWN_PATHS = 5


@dataclass(frozen=True)
class FoundModels:
    """What discovery found: the model files to use, and what it left out and why.

    ``files``: in a stable order (folder files sorted, then the explicit ones).
    ``unfinished``: run folders skipped because they have no ``card.json``.
    ``unreadable``: folders under ``--models`` that could not be listed.
    ``unfinished_given``: explicit files that sit in an unfinished run folder (used as given).
    """

    files: tuple[Path, ...]
    unfinished: tuple[Path, ...] = ()
    unreadable: tuple[Path, ...] = ()
    unfinished_given: tuple[Path, ...] = ()

    def notes(self) -> list[tuple[str, type[ModelWarning]]]:
        """One ``(line, warning class)`` per thing the user should hear about."""
        notes: list[tuple[str, type[ModelWarning]]] = []
        if self.unfinished:
            notes.append((_unfinished_text(self.unfinished), UnfinishedRunWarning))
        for path in self.unfinished_given:
            notes.append(
                (
                    f"{path} is in an unfinished run folder (no {CARD_FILE}: the run may have been killed "
                    "before it finished); used because it was given with --model",
                    UnfinishedRunWarning,
                )
            )
        if self.unreadable:
            n = len(self.unreadable)
            notes.append((f"could not read {n} folder(s) under --models: {_paths_text(self.unreadable)}", ModelWarning))
        return notes


def _paths_text(paths: Sequence[Path | str]) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN_PATHS])
    more = len(paths) - _SHOWN_PATHS
    return shown + (f" and {more} more" if more > 0 else "")


def _unfinished_text(folders: Sequence[Path]) -> str:
    return (
        f"skipped {len(folders)} unfinished run folder(s) ({MODEL_FILE} without {CARD_FILE}: "
        f"killed or still training): {_paths_text(folders)}"
    )


def find_model_files(
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    *,
    precision: str = "fp32",
) -> FoundModels:
    """The ONNX files to score with, and what was skipped (see :func:`discover_model_files`); warns nothing."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    chosen: list[Path] = []
    unfinished: list[Path] = []
    unreadable: list[Path] = []
    if models_dir is not None:
        root = Path(models_dir)
        if not root.exists():
            raise UsageError(f"models folder not found: {root}")
        if not root.is_dir():
            raise UsageError(f"--models must be a folder, got a file: {root} (use --model FILE)")
        _recover_replaced(root)
        found, unreadable = _walk_onnx_files(root)
        found, unfinished = _skip_unfinished_runs(found)
        chosen += _pick_precision(found, precision)
    given, unfinished_given = _given_files(model_files)
    unique = _unique_paths(chosen + given)
    if not unique:
        where = f" under {models_dir}" if models_dir is not None else ""
        skipped = f"; {_unfinished_text(unfinished)}" if unfinished else ""
        skipped += f"; could not read {_paths_text(unreadable)}" if unreadable else ""
        raise UsageError(f"no ONNX models found{where}; pass --models DIR or --model FILE{skipped}")
    return FoundModels(tuple(unique), tuple(unfinished), tuple(unreadable), tuple(unfinished_given))


def _recover_replaced(root: Path) -> None:
    """Put back the runs an ``train --overwrite`` killed between its two renames hid, in ``root`` and the run
    parents below it (:func:`mura_ens.run_folder.recover_replaced_runs`), saying so."""
    from ..console import echo
    from ..run_folder import REPLACED_SUFFIX, recover_replaced_runs

    folders = {root}
    with contextlib.suppress(OSError):
        for dirpath, dirnames, _ in os.walk(root):
            folders.update(Path(dirpath) for d in dirnames if f"{REPLACED_SUFFIX}.partial-" in d)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    for folder in sorted(folders):
        for line in recover_replaced_runs(folder):
            echo(f"mura-ens: {folder}: {line}")


def discover_model_files(
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    *,
    precision: str = "fp32",
) -> list[Path]:
    """The ONNX files to score with, in a stable order (directory files sorted, then ``model_files``).

    Under ``models_dir`` every ``*.onnx`` is found recursively; symlinked folders
    are followed, each real folder visited once (a symlink loop ends there).
    Unfinished run folders (:func:`mura_ens.run_folder.is_unfinished_run`: a run
    folder with no ``card.json``) are skipped with an :class:`UnfinishedRunWarning`
    saying how many and where. ``X.int8.onnx`` is the int8 variant of ``X.onnx``:
    ``precision="fp32"`` takes ``X.onnx`` (and an int8 file that has no fp32
    sibling), ``"int8"`` takes ``X.int8.onnx`` and refuses an fp32 model without
    an int8 sibling rather than silently mixing precisions. Files given
    explicitly in ``model_files`` are used as given (a folder there is refused).
    Duplicates (same resolved path) are dropped.
    """
    found = find_model_files(models_dir, model_files, precision=precision)
    for text, category in found.notes():
        warnings.warn(text, category, stacklevel=2)
    return list(found.files)


def _walk_onnx_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Every ``*.onnx`` file under ``root`` (sorted) and the folders that could not be listed.

    Symlinks are followed; each real folder (device, inode) is listed once, so a
    loop or two links to one folder cannot repeat or hang the walk. Folders reached
    without a symlink are walked first, so a folder that is also linked keeps its own
    path; then symlinked ones, the shallowest (then alphabetically first) path first.
    """
    import heapq

    files: list[Path] = []
    unreadable: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack: list[Path] = [root]
    linked: list[tuple[int, str, Path]] = []  # a heap: (depth, path text, path)
    while stack or linked:
        folder = stack.pop() if stack else heapq.heappop(linked)[2]
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name, reverse=True)
        except OSError:
            unreadable.append(folder)
            continue
        for entry in entries:
            try:
                if entry.is_dir() and entry.is_symlink():
                    heapq.heappush(linked, (len(Path(entry.path).parts), entry.path, Path(entry.path)))
                elif entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.name.endswith(".onnx") and entry.is_file():
                    files.append(Path(entry.path))
            except OSError:  # pragma: no cover - a vanished or unreadable entry
                continue
    return sorted(files), unreadable


def _skip_unfinished_runs(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``files`` without the run models of unfinished run folders, and those folders (in order)."""
    kept: list[Path] = []
    unfinished: list[Path] = []
    state: dict[Path, bool] = {}
    for p in files:
        if p.name in (MODEL_FILE, INT8_FILE):
            folder = p.parent
            if folder not in state:
                state[folder] = is_unfinished_run(folder)
            if state[folder]:
                if folder not in unfinished:
                    unfinished.append(folder)
                continue
        kept.append(p)
    return kept, unfinished


def _pick_precision(found: Sequence[Path], precision: str) -> list[Path]:
    """The files of ``precision`` among ``found`` (see :func:`discover_model_files`)."""
    chosen: list[Path] = []
    names = set(found)
    for p in found:
        is_int8 = p.name.endswith(INT8_SUFFIX)
        fp32_twin = p.with_name(p.name[: -len(INT8_SUFFIX)] + ".onnx") if is_int8 else p
        int8_twin = p if is_int8 else p.with_name(p.name[: -len(".onnx")] + INT8_SUFFIX)
        if precision == "fp32":
            if not is_int8 or fp32_twin not in names:
                chosen.append(p)
        elif is_int8:
            chosen.append(p)
        elif int8_twin not in names:
            raise UsageError(
                f"--precision int8: no {int8_twin.name} beside {p} "
                f"(make one with `mura-ens export {p.parent} --quantize int8`)"
            )
    return chosen


def _given_files(model_files: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """The explicit ``--model`` files, checked, and those of them that sit in an unfinished run folder."""
    given: list[Path] = []
    unfinished: list[Path] = []
    for f in model_files:
        p = Path(f)
        if p.is_dir():
            raise UsageError(f"--model expects an ONNX file, got a folder: {p} (use --models DIR for a folder)")
        if not p.is_file():
            raise UsageError(f"model file not found: {p}")
        if p.name in (MODEL_FILE, INT8_FILE) and is_unfinished_run(p.parent):
            unfinished.append(p)
        given.append(p)
    return given, unfinished


def _unique_paths(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    unique = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def drop_duplicates(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """``specs`` with each model (sha256) once, the first kept; a :class:`DuplicateModelWarning` per copy dropped."""
    first: dict[str, ModelSpec] = {}
    out = []
    for spec in specs:
        kept = first.get(spec.sha256)
        if kept is None:
            first[spec.sha256] = spec
            out.append(spec)
        elif spec.path != kept.path:
            warnings.warn(
                f"{spec.path} is a copy of {kept.path} (same sha256): model {kept.name!r} is used once",
                DuplicateModelWarning,
                stacklevel=2,
            )
    return out


def check_unique_names(specs: Sequence[ModelSpec]) -> None:
    """:class:`ModelError` naming both files when two different models have the same name.

    A model's name is its column (``prob__<name>``) and its identity in a fitted
    ensemble, so it must be unique among the models of a run.
    """
    by_name: dict[str, ModelSpec] = {}
    for spec in specs:
        other = by_name.setdefault(spec.name, spec)
        if other is not spec:
            raise ModelError(
                f"two different models are both named {spec.name!r}: {other.path} and {spec.path}; "
                f"a name must be unique in a run (its {spec.column} column): score them in separate runs, "
                "or give one of them another model_name in its metadata"
            )


def probe_model(spec: ModelSpec, session_config: SessionConfig | None = None) -> None:
    """Check that ``spec`` runs: build (or reuse) its session under ``session_config`` (default CPU).

    A new session is probed once (:func:`mura_ens.scoring.sessions.probe_session`): a
    2-image batch at the model's input size must give one finite probability in
    [0, 1] per image, else a one-line :class:`ModelError` naming the file. The
    session is kept (:func:`~mura_ens.scoring.sessions.get_session`), so a run
    with the same config does not build it again.
    """
    from .sessions import SessionConfig, get_session

    get_session(spec, session_config if session_config is not None else SessionConfig())


def load_models(
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    *,
    precision: str = "fp32",
    session_config: SessionConfig | None = None,
) -> list[ModelSpec]:
    """Discover, read and check the models of a run (frozen, picklable :class:`ModelSpec` records).

    Unfinished run folders are skipped (:class:`UnfinishedRunWarning`); copies of one
    model are used once (:class:`DuplicateModelWarning`); two different models of one
    name are a :class:`ModelError`. With ``session_config``, each model is also probed
    now (:func:`probe_model`); without it, the probe happens when its session is first
    built (every session is probed before use).
    """
    files = discover_model_files(models_dir, model_files, precision=precision)
    specs = drop_duplicates([load_model_spec(p) for p in files])
    check_unique_names(specs)
    if session_config is not None:
        for spec in specs:
            probe_model(spec, session_config)
    return specs
