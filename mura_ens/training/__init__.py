"""Training: tf.data pipeline, Keras trainer, ONNX export with parity.

Importing this package does not import TensorFlow; the functions do, on
first use (quietly, see :mod:`mura_ens.training.tf_runtime`).

- :func:`train` — plugin + data source -> run folders (``trainer.py``)
- :func:`export_run` — re-export a run folder's ``best.keras`` (``export.py``)
"""

from .export import export_run
from .trainer import train

__all__ = ["train", "export_run"]
