"""The run folder and the ONNX metadata contract: one home for both (docs/INTERNALS.md).

``mura-ens train`` writes one folder per model::

    <out>/<run-name>/{model.onnx, card.json, history.tsv, evaluation.json, curves.png,
                      best.keras, parity_batch.npz, tensorboard/}  (+ model.int8.onnx)

Every exported ONNX model carries :class:`ModelMetadata` in its ``metadata_props``
(``to_onnx_props`` / ``from_onnx_props``); ``card.json`` is read and written with
:func:`read_card` / :func:`write_card`. Nothing here imports TensorFlow or onnxruntime.
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
INT8_FILE = "model.int8.onnx"
CARD_FILE = "card.json"
BEST_FILE = "best.keras"
HISTORY_FILE = "history.tsv"
EVALUATION_FILE = "evaluation.json"
CURVES_FILE = "curves.png"
#: A few real, preprocessed data images kept so that ``mura-ens export`` can re-check parity.
PARITY_BATCH_FILE = "parity_batch.npz"
TENSORBOARD_DIR = "tensorboard"

#: How images are brought to the model's square input: stretch, or pad to square then resize.
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "pad")
DEFAULT_THRESHOLD = 0.5

# The order of the props as written; kept stable so re-exports give the same bytes.
_PROP_ORDER = ("plugin", "model_name", "body_parts", "input_size", "resize_policy", "threshold", "mura_ens_version")


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
        cls, props: Mapping[str, str], *, default_name: str, static_size: int | None = None
    ) -> ModelMetadata:
        """Parse ``metadata_props``; missing fields fall back (name ``default_name``, size ``static_size``,
        policy ``stretch``, threshold 0.5, generalist). Raises :class:`MetadataError` for unusable values.
        """
        size = _input_size(props, static_size)
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


def _input_size(props: Mapping[str, str], static_size: int | None) -> int:
    text = props.get("input_size", "").strip()
    if text:
        try:
            size = int(text)
        except ValueError:
            raise MetadataError(f"metadata input_size {text!r} is not an integer") from None
        if static_size is not None and static_size != size:
            raise MetadataError(f"metadata input_size {size} disagrees with the input's static size {static_size}")
    elif static_size:
        size = static_size
    else:
        raise MetadataError("the input has no fixed size and metadata has no input_size")
    if size <= 0:
        raise MetadataError(f"input_size {size} must be positive")
    return size


def _threshold(props: Mapping[str, str]) -> float:
    text = props.get("threshold", "").strip()
    try:
        threshold = float(text or DEFAULT_THRESHOLD)
    except ValueError:
        raise MetadataError(f"metadata threshold {text!r} is not a number") from None
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
    return Path(run_dir) / CARD_FILE


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
