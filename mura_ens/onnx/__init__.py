"""The ONNX side of the toolkit (ONNX Runtime, never TensorFlow).

- :mod:`.inference`: :func:`run_model`, the one loop that feeds image batches to a session;
  used by export parity, graph-rewrite parity, int8 agreement and scoring.
- :mod:`.rewrite`: exact graph rewrites for CPU inference and int8.
- :mod:`.quantize`: int8 static quantization of a run's model.
"""
