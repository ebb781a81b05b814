"""Heatmaps at scoring time, with ONNX Runtime and NumPy only (never TensorFlow): docs/explain.md.

>>> explainer = load_explainer(Path("runs/custom_cnn/model.onnx"))  # doctest: +SKIP
>>> result = explainer.heatmaps(images)  # (N, S, S, 3) uint8 or 0-255 float32  # doctest: +SKIP
>>> result.probabilities, result.maps   # (N,), raw (N, h, w) Grad-CAM/CAM maps  # doctest: +SKIP
>>> normalise(result.maps[0])           # [0, 1] for display  # doctest: +SKIP
"""

from __future__ import annotations

from .artifact import EXPLAIN_VERSION, METHODS, CannotExplain, ExplainSpec, read_spec
from .explainer import Explainer, Heatmaps, grad_cam, load_explainer, normalise

__all__ = [
    "EXPLAIN_VERSION",
    "METHODS",
    "CannotExplain",
    "ExplainSpec",
    "Explainer",
    "Heatmaps",
    "grad_cam",
    "load_explainer",
    "normalise",
    "read_spec",
]
