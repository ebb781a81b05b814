"""Training: tf.data pipeline, Keras trainer, ONNX export with parity.

Importing this package does not import TensorFlow; the functions do, on
first use (quietly, see :mod:`mura_ens.training.tf_runtime`).

- :class:`TrainOptions` — what one training call is asked to do, checked when made (``options.py``)
- :func:`train` — plugin + data source + options -> run folders (``trainer.py``)
- :func:`export_run` — re-export a run folder's ``best.keras`` (``export.py``)
"""

from .export import export_run
from .options import TrainOptions
from .trainer import train

__all__ = ["TrainOptions", "train", "export_run"]
