"""The run folder and the ONNX metadata contract: one home for both (docs/INTERNALS.md).

``mura-ens train`` writes one folder per model::

    <out>/<run-name>/{model.onnx, card.json, history.tsv, evaluation.json, curves.png,
                      best.keras, parity_batch.npz, tensorboard/, model.txt, heldout.csv,
                      explain.json, explain.npz}  (+ model.int8.onnx, model.png, explain.onnx.bin)

Every exported ONNX model carries :class:`ModelMetadata` in its ``metadata_props``
(``to_onnx_props`` / ``from_onnx_props``); ``card.json`` is read and written with
:func:`read_card` / :func:`write_card`. Nothing here imports TensorFlow or onnxruntime.

Finished and unfinished runs (the rule every reader applies, :func:`is_finished_run`):

- a folder is a *run folder* when it holds ``card.json`` or any file only training writes
  there (:data:`RUN_ARTIFACTS`: ``best.keras``, ``history.tsv``, ``evaluation.json``,
  ``curves.png``, ``parity_batch.npz``, ``tensorboard/``) -- :func:`is_run_folder`;
- a run folder is *finished* when ``card.json`` is present. Training writes ``card.json`` last,
  atomically (temp file + rename), after ``model.onnx`` has passed its parity check, so a run
  killed at any moment before that has no card;
- a run folder without ``card.json`` is *unfinished* (:func:`is_unfinished_run`): ``score --models``
  skips its ``model.onnx`` / ``model.int8.onnx`` and says how many runs it skipped and where;
- an ONNX file in a folder that is not a run folder (e.g. ``my_models/densenet/model.onnx`` or
  ``my_models/resnet.onnx`` alone) is a user's own model and is used as it is.

A temporary folder a run is built in must not hold ``card.json`` until the run is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .constants import BODY_PARTS
from .errors import UsageError

MODEL_FILE = "model.onnx"
#: ``X.int8.onnx`` is the int8 twin of ``X.onnx``.
INT8_SUFFIX = ".int8.onnx"
INT8_FILE = "model" + INT8_SUFFIX
CARD_FILE = "card.json"
BEST_FILE = "best.keras"
HISTORY_FILE = "history.tsv"
EVALUATION_FILE = "evaluation.json"
CURVES_FILE = "curves.png"
#: A few real, preprocessed data images kept so that ``mura-ens export`` can re-check parity.
PARITY_BATCH_FILE = "parity_batch.npz"
TENSORBOARD_DIR = "tensorboard"
#: The explain artifact written by export next to ``model.onnx`` (docs/explain.md): its description (written
#: last), the head's weights and, only when it could not be rebuilt from model.onnx, the feature-map graph
#: (format 1 always wrote it). The graph's name must not end in ``.onnx``: scoring
#: takes every ``*.onnx`` under ``--models`` for a model. None of them marks a folder as a run folder.
EXPLAIN_FILE = "explain.json"
EXPLAIN_WEIGHTS_FILE = "explain.npz"
EXPLAIN_GRAPH_FILE = "explain.onnx.bin"
#: The run's validation fold (the images that chose its best epoch, never trained on) as a manifest CSV with
#: absolute paths: a labelled tuning set for ``score`` then ``fit-ensemble``. Not a marker of a run folder.
HELDOUT_FILE = "heldout.csv"
#: The model schematic (``mura_ens.training.schematic``): the layer summary, always; the drawing when Graphviz
#: is there. Common names a user's own model folder may hold too, so neither marks a folder as a run folder.
MODEL_TXT_FILE = "model.txt"
MODEL_PNG_FILE = "model.png"
#: What only the training side writes into a run folder (besides the models and ``card.json``): any of them
#: marks a folder as a run folder (:func:`is_run_folder`), finished or not.
RUN_ARTIFACTS: tuple[str, ...] = (
    BEST_FILE,
    HISTORY_FILE,
    EVALUATION_FILE,
    CURVES_FILE,
    PARITY_BATCH_FILE,
    TENSORBOARD_DIR,
)

#: How images are brought to the model's square input: stretch, or pad to square then resize.
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "pad")
DEFAULT_THRESHOLD = 0.5

# The order of the props as written; kept stable so re-exports give the same bytes.
_PROP_ORDER = ("plugin", "model_name", "body_parts", "input_size", "resize_policy", "threshold", "mura_ens_version")
#: Props int8 models add (``mura_ens.onnx.quantize``): how they were quantized and on how many images.
QUANTIZATION_PROP = "quantization"
CALIBRATION_IMAGES_PROP = "calibration_images"


class MetadataError(ValueError):
    """A metadata prop that cannot be used; the message names the prop and its value (no path)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What every exported model says about itself in ONNX ``metadata_props``.

    ``body_parts`` empty means a generalist. ``extra`` holds further props (e.g. ``base_plugin``,
    ``quantization``, ``calibration_images``), written after the standard ones in their own order.
    """

    plugin: str
    model_name: str
    body_parts: tuple[str, ...]
    input_size: int
    resize_policy: str = "stretch"
    threshold: float = DEFAULT_THRESHOLD
    mura_ens_version: str = __version__
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_onnx_props(self) -> dict[str, str]:
        """The ``metadata_props`` as an ordered ``str -> str`` dict."""
        props = {
            "plugin": self.plugin,
            "model_name": self.model_name,
            "body_parts": ",".join(self.body_parts),
            "input_size": str(int(self.input_size)),
            "resize_policy": self.resize_policy,
            "threshold": repr(float(self.threshold)),
            "mura_ens_version": self.mura_ens_version,
        }
        props.update({str(k): str(v) for k, v in self.extra.items()})
        return props

    @classmethod
    def from_onnx_props(
        cls,
        props: Mapping[str, str],
        *,
        default_name: str,
        static_size: int | None = None,
        input_shape: str | None = None,
    ) -> ModelMetadata:
        """Parse ``metadata_props``; missing fields fall back (name ``default_name``, size ``static_size``,
        policy ``stretch``, threshold 0.5, generalist). Raises :class:`MetadataError` for unusable values.

        ``input_shape``: the model input's shape as text (e.g. ``(N, 32, 32, 3)``), named in errors about the size.
        """
        size = _input_size(props, static_size, input_shape)
        policy = props.get("resize_policy", "").strip() or "stretch"
        if policy not in RESIZE_POLICIES:
            raise MetadataError(f"metadata resize_policy {policy!r} is not one of {', '.join(RESIZE_POLICIES)}")
        parts = tuple(p.strip() for p in props.get("body_parts", "").split(",") if p.strip())
        unknown = [p for p in parts if p not in BODY_PARTS]
        if unknown:
            raise MetadataError(f"metadata body_parts has unknown part(s) {', '.join(unknown)}")
        threshold = _threshold(props)
        return cls(
            plugin=props.get("plugin", "").strip(),
            model_name=props.get("model_name", "").strip() or default_name,
            body_parts=parts,
            input_size=size,
            resize_policy=policy,
            threshold=threshold,
            mura_ens_version=props.get("mura_ens_version", ""),
            extra={k: v for k, v in props.items() if k not in _PROP_ORDER},
        )


def as_onnx_props(metadata: ModelMetadata | Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` as an ordered ``str -> str`` dict, from a :class:`ModelMetadata` or a plain mapping."""
    if isinstance(metadata, ModelMetadata):
        return metadata.to_onnx_props()
    return {str(key): str(value) for key, value in metadata.items()}


def read_onnx_props(model_proto: Any) -> dict[str, str]:
    """The ``metadata_props`` of an ``onnx.ModelProto`` as a dict (in file order)."""
    return {prop.key: prop.value for prop in model_proto.metadata_props}


def write_onnx_props(model_proto: Any, metadata: ModelMetadata | Mapping[str, Any]) -> None:
    """Replace the ``metadata_props`` of an ``onnx.ModelProto`` with ``metadata`` (values as strings)."""
    del model_proto.metadata_props[:]
    for key, value in as_onnx_props(metadata).items():
        prop = model_proto.metadata_props.add()
        prop.key, prop.value = key, value


def _input_size(props: Mapping[str, str], static_size: int | None, input_shape: str | None) -> int:
    text = props.get("input_size", "").strip()
    if text:
        try:
            size = int(text)
        except ValueError:
            raise MetadataError(f"metadata input_size {props['input_size']!r} is not an integer") from None
        if static_size is not None and static_size != size:
            shown = f"input shape {input_shape}" if input_shape else f"the input's static size {static_size}"
            raise MetadataError(f"metadata input_size {size} disagrees with {shown}")
    elif static_size:
        size = static_size
    else:
        shown = f"input shape {input_shape}" if input_shape else "the input"
        raise MetadataError(f"{shown} has no fixed size and metadata has no input_size")
    if size <= 0:
        raise MetadataError(f"input_size {size} must be positive")
    return size


def _threshold(props: Mapping[str, str]) -> float:
    text = props.get("threshold", "").strip()
    try:
        threshold = float(text or DEFAULT_THRESHOLD)
    except ValueError:
        raise MetadataError(f"metadata threshold {props['threshold']!r} is not a number") from None
    if not 0.0 <= threshold <= 1.0:
        raise MetadataError(f"metadata threshold {threshold} is outside [0, 1]")
    return threshold


def default_model_name(path: str | os.PathLike) -> str:
    """Run-folder name for ``<run>/model.onnx`` / ``<run>/model.int8.onnx``, else the file stem."""
    path = Path(path)
    if path.name in (MODEL_FILE, INT8_FILE) and path.parent.name:
        return path.parent.name
    name = path.name
    return name[: -len(".onnx")] if name.endswith(".onnx") else path.stem


def card_path(run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/card.json``."""
    return Path(run_dir) / CARD_FILE


#: ``.<final name>.partial-<pid>``: the infix that marks a run folder still being built by ``mura-ens train``.
PARTIAL_INFIX = ".partial-"


def parse_partial_name(name: str) -> tuple[str, int] | None:
    """``(final name, pid)`` of a partial run folder's name (``.<name>.partial-<pid>``), or None for any other name."""
    if not name.startswith(".") or PARTIAL_INFIX not in name:
        return None
    final, _, pid = name[1:].rpartition(PARTIAL_INFIX)
    return (final, int(pid)) if final and pid.isdigit() else None


#: Suffix of the final name under which ``train --overwrite`` moves the old run aside
#: (``.<name>.replaced.partial-<pid>``) when the file system cannot swap two folders in one step.
REPLACED_SUFFIX = ".replaced"
#: The marker inside a partial folder (``mura_ens.training.atomic_run``): who builds it, for which name.
PARTIAL_MARKER = ".mura-ens-partial.json"


def recover_replaced_runs(folder: str | os.PathLike) -> list[str]:
    """Finish or undo, in ``folder``, what an ``--overwrite`` killed mid-commit left; return one line per repair.

    ``train --overwrite`` swaps the new run into place in one step where the file system can
    (``renameat2(RENAME_EXCHANGE)``), else in two renames: the old run ``NAME`` to
    ``.NAME.replaced.partial-PID``, then the new one ``.NAME.partial-PID`` to ``NAME``. Killed between them,
    neither is visible. For each such aside folder whose process is gone (on this host):

    - ``NAME`` exists: the commit went through; the aside folder (the old run) is deleted;
    - else the new run's folder holds its ``card.json`` (it was finished): it is renamed to ``NAME``, the old
      one deleted (the commit is finished);
    - else the old run is renamed back to ``NAME``.

    A partial folder of a dead process with no marker (an old run swapped out, killed before its deletion) is
    deleted too when ``NAME`` is a finished run. Called by ``train`` (before building) and by ``score`` on
    ``--models`` before it looks for models, so the run is back before anyone misses it.
    """
    import shutil

    folder = Path(folder)
    done: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return done
    for entry in entries:
        parsed = parse_partial_name(entry.name)
        if parsed is None or not entry.is_dir() or entry.is_symlink() or _alive_here(entry, parsed[1]):
            continue
        name, pid = parsed
        if not name.endswith(REPLACED_SUFFIX):
            swapped_out = not (entry / PARTIAL_MARKER).exists() and (entry / CARD_FILE).is_file()
            if swapped_out and is_finished_run(folder / name):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry.name}: the run {name} it held was replaced by --overwrite")
            continue
        name = name[: -len(REPLACED_SUFFIX)]
        target, new = folder / name, folder / f".{name}{PARTIAL_INFIX}{pid}"
        try:
            if os.path.lexists(target):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry.name}: the run {name} it held was replaced by --overwrite")
            elif (new / CARD_FILE).is_file() and not new.is_symlink():
                os.rename(new, target)
                (target / PARTIAL_MARKER).unlink(missing_ok=True)
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"finished the --overwrite of {name} that was stopped between its two renames")
            else:
                os.rename(entry, target)
                done.append(f"put back {name}: its --overwrite was stopped before the new run was in place")
        except OSError:  # a read-only folder or a race with another process: left as it is
            continue
    return done


def _alive_here(entry: Path, pid: int) -> bool:
    """Whether the process ``pid`` that named ``entry`` may still run: alive on this host, or of another host
    (its marker, or the marker of the new run it was replaced by, names another host: it cannot be checked)."""
    import socket

    name = entry.name.rpartition(PARTIAL_INFIX)[0]
    sibling = entry.parent / f"{name.removesuffix(REPLACED_SUFFIX)}{PARTIAL_INFIX}{pid}"
    for marker in (entry / PARTIAL_MARKER, sibling / PARTIAL_MARKER):
        try:
            host = json.loads(marker.read_text(encoding="utf-8")).get("host")
        except (OSError, ValueError, AttributeError):
            continue
        if host and host != socket.gethostname():
            return True
    return pid_running(pid)


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (this process counts; another user's process counts too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the pid exists (another user's process)
        return True
    return True


def is_partial_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a run folder under construction (``.<name>.partial-<pid>``)."""
    return parse_partial_name(Path(path).name) is not None


def is_finished_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a finished run: ``card.json`` is present (written last, atomically) and the
    folder is not a partial one still waiting for its rename into place (a kill between the two)."""
    return card_path(run_dir).is_file() and not is_partial_run_dir(run_dir)


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a mura-ens run folder, finished or not: ``card.json`` or any of
    :data:`RUN_ARTIFACTS` is in it. A folder holding only ONNX files is not one (a user's own models).
    """
    folder = Path(folder)
    return any(os.path.lexists(folder / name) for name in (CARD_FILE, *RUN_ARTIFACTS))


def is_unfinished_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a run folder without ``card.json``: a run killed (or still running) before it finished."""
    return is_run_folder(folder) and not is_finished_run(folder)


def require_run_files(run_dir: str | os.PathLike, *names: str) -> Path:
    """``run_dir`` as a Path once it and each of ``names`` in it exist.

    Raises :class:`UsageError` ``not a mura-ens run folder: <the first missing path> is missing``.
    """
    run_dir = Path(run_dir)
    for needed in (run_dir, *(run_dir / name for name in names)):
        if not needed.exists():
            raise UsageError(f"not a mura-ens run folder: {needed} is missing")
    return run_dir


def read_card(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``card.json`` of a run folder as a dict; :class:`UsageError` naming the file when missing or unreadable."""
    path = card_path(run_dir)
    if not path.is_file():
        raise UsageError(f"not a mura-ens run folder: {path} is missing")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable model card ({type(exc).__name__}: {exc})") from None
    if not isinstance(card, dict):
        raise UsageError(f"{path} is not a mura-ens model card (a JSON object is expected)")
    return card


def write_card(run_dir: str | os.PathLike, card: Mapping[str, Any]) -> Path:
    """Write ``card.json`` atomically."""
    from .io import atomic_write_json

    return atomic_write_json(card_path(run_dir), dict(card))


def update_card(run_dir: str | os.PathLike, sections: Mapping[str, Any]) -> dict[str, Any]:
    """Set top-level ``sections`` of ``card.json``, re-read just before (keeps what others wrote); the new card."""
    card = read_card(run_dir)
    card.update(sections)
    write_card(run_dir, card)
    return card


def card_metadata(card: Mapping[str, Any], *, run_dir: str | os.PathLike) -> ModelMetadata:
    """The card's ``onnx_metadata`` as :class:`ModelMetadata` (name defaults to the run folder's).

    Raises :class:`UsageError` naming ``card.json`` when the section is missing or unusable.
    """
    try:
        return ModelMetadata.from_onnx_props(card["onnx_metadata"], default_name=Path(run_dir).name)
    except (MetadataError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{card_path(run_dir)} is not a mura-ens model card ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class FoldRecipe:
    """How a run drew its rows, as recorded in ``card.json``: enough to draw them again.

    ``source``/``manifest_sha256``/``split_seed``/``val_fraction`` come from the card's ``data``
    section (the split seed and validation fraction fall back to ``config``), ``body_parts`` from
    the card, ``max_images`` and ``seed`` (the image cap's seed) from ``config``.
    See :func:`mura_ens.training.data.model_rows`.
    """

    source: str | None
    manifest_sha256: str | None
    split_seed: int
    val_fraction: float
    body_parts: tuple[str, ...]
    max_images: int | None
    seed: int

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> FoldRecipe:
        """Read the recipe; :class:`UsageError` for an unreadable seed, fraction or image cap."""
        info = card.get("data") or {}
        config = card.get("config") or {}
        try:
            split_seed = int(info.get("split_seed", config.get("seed", 0)))
            val_fraction = float(info.get("val_fraction", config.get("val_fraction", 0.2)))
            max_images = config.get("max_images")
            return cls(
                source=info.get("source"),
                manifest_sha256=info.get("manifest_sha256"),
                split_seed=split_seed,
                val_fraction=val_fraction,
                body_parts=tuple(card.get("body_parts") or ()),
                max_images=int(max_images) if max_images else None,
                seed=int(config.get("seed", split_seed)),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"card.json has an unreadable split seed, validation fraction or max_images ({exc})"
            ) from None
