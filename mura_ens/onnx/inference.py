"""Run an ONNX Runtime session over images: the one loop every ONNX caller uses."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError

CPU_PROVIDERS = ("CPUExecutionProvider",)


def cpu_session(model: str | bytes, options: Any = None) -> Any:
    """An ``InferenceSession`` on the CPU for a model path or serialized bytes (quiet logs by default).

    onnxruntime also lists ``AzureExecutionProvider``: the providers are always passed explicitly.
    """
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=list(CPU_PROVIDERS))


def run_model(
    session: Any,
    images: np.ndarray,
    batch_size: int = 16,
    *,
    input_name: str | None = None,
    dtype: Any = np.float32,
    name: str = "model",
    run_options: Any = None,
) -> np.ndarray:
    """One probability per image: ``session``'s first output on ``images`` fed in chunks of ``batch_size``.

    ``images``: (N, H, W, 3) pixels; each chunk is cast to ``dtype`` (float32, or uint8 for
    uint8-input models). The input name is read from the session unless given. The output
    must hold one value per image ((N, 1) or (N,)); anything else is a :class:`ModelError`
    naming ``name``. ``run_options`` (an ``onnxruntime.RunOptions``) goes to every
    ``session.run``. Returns float64 (N,).
    """
    images = np.asarray(images)
    feed_name = input_name or session.get_inputs()[0].name
    step = max(1, int(batch_size))
    out = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), step):
        chunk = np.ascontiguousarray(images[start : start + step], dtype=dtype)
        output = session.run(None, {feed_name: chunk}, run_options)[0]
        probs = np.asarray(output, dtype=np.float64).reshape(len(chunk), -1)
        if probs.shape[1] != 1:
            raise ModelError(f"{name}: output shape {tuple(np.shape(output))}; expected (N, 1) probabilities")
        out[start : start + len(chunk)] = probs[:, 0]
    return out
