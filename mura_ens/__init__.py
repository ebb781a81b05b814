"""mura-ens: abnormality detection on MURA-layout radiographs.

Keras model plugins are trained and exported to ONNX; scoring runs on ONNX
Runtime only (no TensorFlow), averages image probabilities per study and
combines models per body part.
"""

__version__ = "0.1.0"
