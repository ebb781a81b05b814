"""Heatmaps at scoring time, with ONNX Runtime and NumPy only (never TensorFlow): docs/explain.md.

>>> explainer = load_explainer(Path("runs/custom_cnn/model.onnx"))  # doctest: +SKIP
>>> result = explainer.heatmaps(images)  # (N, S, S, 3) uint8 or 0-255 float32  # doctest: +SKIP
>>> result.probabilities, result.maps   # (N,), raw (N, h, w) XGrad-CAM/CAM maps  # doctest: +SKIP
>>> normalise(result.maps[0])           # [0, 1] for display  # doctest: +SKIP
"""

from __future__ import annotations

from .artifact import EXPLAIN_VERSION, METHODS, CannotExplain, ExplainSpec, read_spec
from .explainer import MAP_METHODS, Explainer, Heatmaps, grad_cam, hires_cam, load_explainer, normalise, xgrad_cam

__all__ = [
    "EXPLAIN_VERSION",
    "MAP_METHODS",
    "METHODS",
    "CannotExplain",
    "ExplainSpec",
    "Explainer",
    "Heatmaps",
    "grad_cam",
    "hires_cam",
    "load_explainer",
    "normalise",
    "read_spec",
    "xgrad_cam",
]
