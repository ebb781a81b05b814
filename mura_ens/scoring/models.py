"""ONNX model discovery, metadata and validation: which models a run scores with.

A model is described by a :class:`ModelSpec`, a small frozen (picklable)
record built from the file alone (``onnx.load``, no session), so that it can
travel to another process or a Dask worker; sessions are made there, see
:mod:`mura_ens.scoring.sessions`.

Metadata (``metadata_props``, docs/INTERNALS.md): ``plugin``, ``model_name``,
``body_parts`` (comma list, empty = generalist), ``input_size``,
``resize_policy``, ``threshold``, ``mura_ens_version``; int8 models add
``quantization``. Missing fields fall back: name = run-folder name for
``model.onnx``/``model.int8.onnx`` else the file stem; input size = the static
H of the input; policy = ``stretch``; threshold = 0.5; generalist.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import BODY_PARTS
from ..errors import ModelError, UsageError

PRECISIONS: tuple[str, ...] = ("fp32", "int8")
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "pad")

#: Input element types accepted, as ONNX TensorProto names -> numpy dtype names.
_INPUT_DTYPES = {1: "float32", 2: "uint8"}  # TensorProto.FLOAT, TensorProto.UINT8
_INT8_SUFFIX = ".int8.onnx"


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


def discover_model_files(
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    *,
    precision: str = "fp32",
) -> list[Path]:
    """The ONNX files to score with, in a stable order (directory files sorted, then ``model_files``).

    Under ``models_dir`` every ``*.onnx`` is found recursively. ``X.int8.onnx``
    is the int8 variant of ``X.onnx``: ``precision="fp32"`` takes ``X.onnx``
    (and an int8 file that has no fp32 sibling), ``"int8"`` takes ``X.int8.onnx``
    and refuses an fp32 model without an int8 sibling rather than silently
    mixing precisions. Files given explicitly in ``model_files`` are used as
    given. Duplicates (same resolved path) are dropped.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    chosen: list[Path] = []
    if models_dir is not None:
        root = Path(models_dir)
        if not root.exists():
            raise UsageError(f"models folder not found: {root}")
        if not root.is_dir():
            raise UsageError(f"--models must be a folder, got a file: {root} (use --model FILE)")
        found = sorted(p for p in root.rglob("*.onnx") if p.is_file())
        names = set(found)
        for p in found:
            is_int8 = p.name.endswith(_INT8_SUFFIX)
            fp32_twin = p.with_name(p.name[: -len(_INT8_SUFFIX)] + ".onnx") if is_int8 else p
            int8_twin = p if is_int8 else p.with_name(p.name[: -len(".onnx")] + _INT8_SUFFIX)
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
    for f in model_files:
        p = Path(f)
        if not p.is_file():
            raise UsageError(f"model file not found: {p}")
        chosen.append(p)
    seen: set[Path] = set()
    unique = []
    for p in chosen:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        where = f" under {models_dir}" if models_dir is not None else ""
        raise UsageError(f"no ONNX models found{where}; pass --models DIR or --model FILE")
    return unique


def load_model_spec(path: str | os.PathLike) -> ModelSpec:
    """Read one model's metadata and input signature; :class:`ModelError` if unusable.

    The input must be one rank-4 tensor (N, H, W, 3) of float32 or uint8 with
    H == W == the metadata ``input_size`` when they are static.
    """
    import onnx

    path = Path(path)
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}

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
    dtype = _INPUT_DTYPES.get(ttype.elem_type)
    if dtype is None:
        type_name = onnx.TensorProto.DataType.Name(ttype.elem_type)
        raise ModelError(f"{path}: input {inp.name!r} has element type {type_name}; expected FLOAT or UINT8")
    static_h = dims[1] if isinstance(dims[1], int) else None
    static_w = dims[2] if isinstance(dims[2], int) else None
    if static_h is not None and static_w is not None and static_h != static_w:
        raise ModelError(f"{path}: input {inp.name!r} has shape {shape_text}; expected a square H == W")

    if meta.get("input_size", "").strip():
        try:
            size = int(meta["input_size"])
        except ValueError:
            raise ModelError(f"{path}: metadata input_size {meta['input_size']!r} is not an integer") from None
        static = static_h or static_w
        if static is not None and static != size:
            raise ModelError(f"{path}: metadata input_size {size} disagrees with input shape {shape_text}")
    elif static_h or static_w:
        size = static_h or static_w
    else:
        raise ModelError(f"{path}: input shape {shape_text} has no fixed size and metadata has no input_size")
    if size <= 0:
        raise ModelError(f"{path}: input_size {size} must be positive")

    policy = meta.get("resize_policy", "").strip() or "stretch"
    if policy not in RESIZE_POLICIES:
        raise ModelError(f"{path}: metadata resize_policy {policy!r} is not one of {', '.join(RESIZE_POLICIES)}")
    parts = tuple(p.strip() for p in meta.get("body_parts", "").split(",") if p.strip())
    unknown = [p for p in parts if p not in BODY_PARTS]
    if unknown:
        raise ModelError(f"{path}: metadata body_parts has unknown part(s) {', '.join(unknown)}")
    try:
        threshold = float(meta.get("threshold", "").strip() or 0.5)
    except ValueError:
        raise ModelError(f"{path}: metadata threshold {meta['threshold']!r} is not a number") from None
    if not 0.0 <= threshold <= 1.0:
        raise ModelError(f"{path}: metadata threshold {threshold} is outside [0, 1]")

    return ModelSpec(
        path=str(path.resolve()),
        name=meta.get("model_name", "").strip() or default_model_name(path),
        plugin=meta.get("plugin", "").strip(),
        body_parts=parts,
        input_size=size,
        resize_policy=policy,
        threshold=threshold,
        input_name=inp.name,
        input_dtype=dtype,
        sha256=hashlib.sha256(data).hexdigest(),
        metadata=meta,
    )


def default_model_name(path: str | os.PathLike) -> str:
    """Run-folder name for ``<run>/model.onnx`` / ``<run>/model.int8.onnx``, else the file stem."""
    path = Path(path)
    if path.name in ("model.onnx", "model" + _INT8_SUFFIX) and path.parent.name:
        return path.parent.name
    name = path.name
    return name[: -len(".onnx")] if name.endswith(".onnx") else path.stem


def unique_names(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """Make model names unique by suffixing repeats ``-2``, ``-3``... (order kept)."""
    from dataclasses import replace

    taken: set[str] = set()
    out = []
    for spec in specs:
        name, k = spec.name, 1
        while name in taken:
            k += 1
            name = f"{spec.name}-{k}"
        taken.add(name)
        out.append(spec if name == spec.name else replace(spec, name=name))
    return out


def load_models(
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    *,
    precision: str = "fp32",
) -> list[ModelSpec]:
    """Discover, read and validate the models of a run; names made unique."""
    files = discover_model_files(models_dir, model_files, precision=precision)
    return unique_names([load_model_spec(p) for p in files])
