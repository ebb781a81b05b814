"""One ONNX model as a scorer sees it: :class:`ModelSpec`, read from the file alone by :func:`load_model_spec`.

A small frozen (picklable) record built from the file's protobuf (read by
:mod:`mura_ens.onnx.wire`, or ``onnx.load`` for an irregular file; no
session), so that it can travel to another process or a Dask worker.
Metadata (``metadata_props``, docs/INTERNALS.md) are parsed by
:meth:`mura_ens.run_folder.ModelMetadata.from_onnx_props`. Scoring
(:mod:`mura_ens.scoring.models`, which re-exports both names) and int8
export (:mod:`mura_ens.onnx.quantize`) use it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..run_folder import MetadataError, ModelMetadata, default_model_name, read_onnx_props
from .wire import WireError, read_header

#: Input element types accepted, as ONNX TensorProto names -> numpy dtype names.
_INPUT_DTYPES = {1: "float32", 2: "uint8"}  # TensorProto.FLOAT, TensorProto.UINT8


@dataclass(frozen=True)
class ModelSpec:
    """One ONNX model as the scorer sees it. Frozen and picklable.

    ``body_parts`` empty means a generalist (serves every image, also those of
    unknown body part); otherwise the model serves only those parts.
    """

    path: str
    name: str
    plugin: str
    body_parts: tuple[str, ...]
    input_size: int
    resize_policy: str
    threshold: float
    input_name: str
    input_dtype: str
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_generalist(self) -> bool:
        """True when the model serves every body part."""
        return not self.body_parts

    @property
    def column(self) -> str:
        """Its probability column in images.csv / studies.csv."""
        return f"prob__{self.name}"

    @property
    def input_key(self) -> tuple[int, str]:
        """(size, policy): models sharing it share one resized copy of each image."""
        return (self.input_size, self.resize_policy)

    def serves(self, body_part: str) -> bool:
        """Whether this model scores images of ``body_part`` ("" = unknown part)."""
        return self.is_generalist or body_part in self.body_parts

    def describe(self) -> dict:
        """A JSON-friendly summary (report provenance, run fingerprint)."""
        return {
            "name": self.name,
            "path": self.path,
            "plugin": self.plugin,
            "body_parts": list(self.body_parts),
            "input_size": self.input_size,
            "resize_policy": self.resize_policy,
            "threshold": self.threshold,
            "sha256": self.sha256,
            "metadata": dict(self.metadata),
        }


def load_model_spec(path: str | os.PathLike) -> ModelSpec:
    """Read one model's metadata and input signature; :class:`ModelError` if unusable.

    The input must be one rank-4 tensor (N, H, W, 3) of float32 or uint8 with
    H == W == the metadata ``input_size`` when they are static.
    """
    path = Path(path)
    data = _model_bytes(path)
    fast = _spec_without_onnx(path, data)
    if fast is not None:
        return fast
    import onnx  # the irregular cases: onnx's own parse gives the user its message

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (it holds no graph)")
    props = read_onnx_props(model)
    name, dtype, static_size, shape_text = _image_input(model, path)
    try:
        meta = ModelMetadata.from_onnx_props(
            props, default_name=default_model_name(path), static_size=static_size, input_shape=shape_text
        )
    except MetadataError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return _spec(path, data, meta, (name, dtype), props)


def _spec(
    path: Path, data: bytes, meta: ModelMetadata, image_input: tuple[str, str], props: dict[str, str]
) -> ModelSpec:
    """The :class:`ModelSpec` of the model file ``path`` holding ``data``: its metadata, image input (name, dtype)."""
    return ModelSpec(
        path=str(path.resolve()),
        name=meta.model_name,
        plugin=meta.plugin,
        body_parts=meta.body_parts,
        input_size=meta.input_size,
        resize_policy=meta.resize_policy,
        threshold=meta.threshold,
        input_name=image_input[0],
        input_dtype=image_input[1],
        sha256=hashlib.sha256(data).hexdigest(),
        metadata=props,
    )


def _spec_without_onnx(path: Path, data: bytes) -> ModelSpec | None:
    """The spec of a well-formed model read by :func:`mura_ens.onnx.wire.read_header` (no ``import onnx``: ~0.65 s).

    None for anything irregular (not parseable, no graph, not one (N, H, W, 3) float/uint8
    input): :func:`load_model_spec` then reads it with ``onnx`` and says what is wrong.
    """
    try:
        header = read_header(data)
    except WireError:
        return None
    inputs = [i for i in header.inputs if i.name not in header.initializers]
    if not header.has_graph or len(inputs) != 1 or not inputs[0].is_tensor:
        return None
    inp = inputs[0]
    dims, dtype = inp.dims, _INPUT_DTYPES.get(inp.elem_type)
    if len(dims) != 4 or dims[3] != 3 or dtype is None or (isinstance(dims[0], int) and dims[0] > 0):
        return None
    static = [d if isinstance(d, int) else None for d in dims[1:3]]
    if static[0] is not None and static[1] is not None and static[0] != static[1]:
        return None
    shape_text = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
    try:
        meta = ModelMetadata.from_onnx_props(
            header.props,
            default_name=default_model_name(path),
            static_size=static[0] or static[1],
            input_shape=shape_text,
        )
    except MetadataError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return _spec(path, data, meta, (inp.name, dtype), header.props)


def _model_bytes(path: Path) -> bytes:
    """The file's bytes; :class:`ModelError` for a folder, a missing, unreadable or empty file."""
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not an ONNX file (use --models DIR for a folder of models)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise ModelError(f"{path}: the file is empty (0 bytes; an export that did not finish?); export it again")
    return data


def _image_input(model, path: Path) -> tuple[str, str, int | None, str]:
    """(name, numpy dtype name, static H == W or None, shape as text) of the model's one image input.

    :class:`ModelError` when there is not exactly one (N, H, W, 3) float32/uint8 input with H == W.
    """
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one image input, found {len(inputs)} ({', '.join(i.name for i in inputs)})")
    inp = inputs[0]
    ttype = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim]
    shape_text = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
    if len(dims) != 4 or dims[3] != 3:
        raise ModelError(f"{path}: input {inp.name!r} has shape {shape_text}; expected (N, H, W, 3) RGB pixels")
    if isinstance(dims[0], int) and dims[0] > 0:
        raise ModelError(
            f"{path}: input {inp.name!r} has shape {shape_text}, a fixed batch dimension of {dims[0]}; "
            "export it with a dynamic batch dimension (None / 'N' in the input signature)"
        )
    dtype = _INPUT_DTYPES.get(ttype.elem_type)
    if dtype is None:
        type_name = onnx.TensorProto.DataType.Name(ttype.elem_type)
        raise ModelError(f"{path}: input {inp.name!r} has element type {type_name}; expected FLOAT or UINT8")
    static_h = dims[1] if isinstance(dims[1], int) else None
    static_w = dims[2] if isinstance(dims[2], int) else None
    if static_h is not None and static_w is not None and static_h != static_w:
        raise ModelError(f"{path}: input {inp.name!r} has shape {shape_text}; expected a square H == W")
    return inp.name, dtype, static_h or static_w, shape_text
