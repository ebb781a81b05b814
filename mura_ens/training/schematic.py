"""The model schematic of a run: always ``model.txt``, and ``model.png`` when pydot and Graphviz are there.

``model.txt`` is a layer summary like Keras' ``model.summary()``: one line per layer (nested models such
as a DenseNet backbone expanded and indented) with its output shape, parameter count, trainability and
the layers it takes its input from, then a ``parameters:`` line with the totals of ``count_params()``. ``model.png`` is ``keras.utils.plot_model`` (shapes and layer names), drawn only
when the ``pydot`` package and Graphviz's ``dot`` program are both found; otherwise the card says
why (Graphviz: ``apt install graphviz``, ``brew install graphviz`` or ``conda install graphviz``).
A schematic never fails a run: a drawing that fails is recorded in the card with its reason.

:func:`write_schematic` returns the card's ``schematic`` section::

    {"model_txt": true, "model_png": false, "why": "Graphviz 'dot' not found on PATH ...",
     "parameters": {"total": 1234, "trainable": 1200, "non_trainable": 34}}
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..run_folder import MODEL_PNG_FILE, MODEL_TXT_FILE

#: Resolution of ``model.png`` (Keras' default, 200, makes a DenseNet201 drawing of hundreds of megapixels).
PNG_DPI = 72
GRAPHVIZ_HINT = "install Graphviz (apt install graphviz, brew install graphviz or conda install graphviz)"


def write_schematic(model: Any, run_dir: Path) -> dict[str, Any]:
    """Write ``model.txt`` (and ``model.png`` when possible) into ``run_dir``; return the card section."""
    counts = parameter_counts(model)
    atomic_write_text(Path(run_dir) / MODEL_TXT_FILE, model_summary(model, counts))
    why = png_missing()
    if why is None:
        why = _plot(model, Path(run_dir) / MODEL_PNG_FILE)
    return {"model_txt": True, "model_png": why is None, "why": why, "parameters": counts}


def parameter_counts(model: Any) -> dict[str, int]:
    """``{"total", "trainable", "non_trainable"}`` parameter counts of ``model`` (weights, no optimizer)."""
    trainable = int(sum(_size(weight) for weight in model.trainable_weights))
    total = int(model.count_params())
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def model_summary(model: Any, counts: dict[str, int] | None = None) -> str:
    """The text of ``model.txt``: one row per layer (nested models expanded, indented), then the totals.

    Written here rather than by ``model.summary()``: Keras renders that with ``rich``, which in a Jupyter
    kernel also sends every line it prints as an (empty) display output, and cuts columns at 80 characters.
    """
    counts = counts or parameter_counts(model)
    rows = [("layer (type)", "output shape", "params", "trainable", "connected to"), *_layer_rows(model, 0)]
    widths = [min(max(len(row[i]) for row in rows), limit) for i, limit in enumerate((70, 28, 12, 9, 200))]
    aligned = ["  ".join(_cell(row, widths, i) for i in range(len(widths))).rstrip() for row in rows]
    rule = "-" * min(max(len(line) for line in aligned), 160)
    totals = (
        f"parameters: total {counts['total']}, trainable {counts['trainable']}, non-trainable {counts['non_trainable']}"
    )
    return "\n".join([f'Model: "{model.name}"', rule, aligned[0], rule, *aligned[1:], rule, totals]) + "\n"


def _cell(row: tuple[str, ...], widths: list[int], index: int) -> str:
    return row[index].rjust(widths[index]) if index == 2 else row[index].ljust(widths[index])


def _layer_rows(model: Any, depth: int) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for layer in model.layers:
        params = int(layer.count_params()) if layer.built else 0
        trainable = "-" if not layer.weights else ("Y" if layer.trainable else "N")
        name = "  " * depth + f"{layer.name} ({type(layer).__name__})"
        rows.append((name, _output_shape(layer), f"{params:,}", trainable, _inbound(layer)))
        if getattr(layer, "layers", None):
            rows += _layer_rows(layer, depth + 1)
    return rows


def _output_shape(layer: Any) -> str:
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return "?"
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return ", ".join(str(tuple(tensor.shape)) for tensor in outputs)


def _inbound(layer: Any) -> str:
    """The layers whose outputs ``layer`` takes (functional models; empty for an input)."""
    names = []
    for node in getattr(layer, "_inbound_nodes", []) or []:
        for tensor in getattr(node, "input_tensors", []) or []:
            operation = getattr(getattr(tensor, "_keras_history", None), "operation", None)
            if operation is not None and operation is not layer:
                names.append(operation.name)
    return ", ".join(dict.fromkeys(names))


def png_missing() -> str | None:
    """Why ``model.png`` cannot be drawn here (no pydot, no Graphviz ``dot``), or None."""
    try:
        has_pydot = importlib.util.find_spec("pydot") is not None
    except (ImportError, ValueError):
        has_pydot = False
    if not has_pydot:
        return "pydot is not installed (pip install pydot)"
    if shutil.which("dot") is None:
        return f"Graphviz 'dot' not found on PATH: {GRAPHVIZ_HINT}"
    return None


def _plot(model: Any, path: Path) -> str | None:
    """Draw ``model.png`` (written beside, then renamed); the reason it failed, or None."""
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        keras.utils.plot_model(
            model, to_file=str(tmp), show_shapes=True, show_layer_names=True, expand_nested=True, dpi=PNG_DPI
        )
        os.replace(tmp, path)
    except Exception as exc:  # a drawing is a nicety: the run goes on and the card says why
        with_reason = " ".join(str(exc).split())[:300]
        if tmp.exists():
            tmp.unlink()
        return f"plot_model failed ({type(exc).__name__}: {with_reason})"
    return None


def _size(weight: Any) -> int:
    size = 1
    for dim in weight.shape:
        size *= int(dim)
    return size
