"""Training (imports TensorFlow lazily): input pipeline, trainer, ONNX export."""
