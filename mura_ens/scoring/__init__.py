"""Scoring with ONNX Runtime (never TensorFlow): models, batch runner, ensembles, backends."""
