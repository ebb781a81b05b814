"""TensorBoard logs of a training run: ``tensorboard/`` in the run folder (``--no-tensorboard`` to skip).

Keras' own ``TensorBoard`` callback writes, per epoch, every compiled metric of the run under
``tensorboard/train`` and ``tensorboard/validation``: ``epoch_loss`` (the class-weighted loss),
``epoch_auc``, ``epoch_accuracy`` and ``epoch_kappa`` (the project's unweighted metrics,
:mod:`.keras_metrics`, the same figures as ``history.tsv``), and, under ``train``,
``epoch_learning_rate`` (the rate of that epoch: the callback runs before ``ReduceLROnPlateau``).
It also writes the model's structure (the conceptual graph, tag ``keras``) and, when training begins,
the op graph of the model's forward pass (:func:`write_op_graph`; the Graphs tab). Scalars are stored as tensor summaries
(TF 2 ``tf.summary``): read them with ``EventAccumulator(...).Tensors(tag)``.

The logs are written inside the run's partial folder and arrive with it when it is renamed into
place (:mod:`.atomic_run`). ``tf.summary`` comes from the ``tensorboard`` package (in the [train]
extra since TF no longer pulls it in); without it, a run trains without logs and says why.
Imports Keras at module level: import this module only inside functions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .tf_runtime import import_tensorflow, model_inputs

tf, keras = import_tensorflow()
# Keras is untyped here (no stubs): its base class is taken as an Any-typed name mypy can subclass.
_TensorBoard: Any = keras.callbacks.TensorBoard

#: The tags every run's logs hold (``train`` and ``validation``; the learning rate under ``train`` only).
EPOCH_TAGS: tuple[str, ...] = ("epoch_loss", "epoch_auc", "epoch_accuracy", "epoch_kappa")
LR_TAG = "epoch_learning_rate"
#: The subfolder of the log folder that holds the training scalars and the graphs.
TRAIN_SUBDIR = "train"


def tensorboard_missing() -> str | None:
    """Why no TensorBoard logs can be written (the ``tensorboard`` package is not installed), or None."""
    try:
        found = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return "no TensorBoard logs: the tensorboard package is not installed (pip install 'mura-ens[train]')"


class RunTensorBoard(_TensorBoard):
    """Keras' ``TensorBoard`` (per-epoch scalars, the conceptual graph) plus the op graph of the model's
    forward pass, written when training begins (Keras 3 no longer writes an op graph itself).

    ``graph_written`` says whether the op graph was written (a model whose forward pass cannot be
    traced alone trains on, without it).
    """

    def __init__(self, log_dir: Path):
        super().__init__(
            log_dir=str(log_dir),
            histogram_freq=0,
            write_graph=True,
            write_images=False,
            update_freq="epoch",
            profile_batch=0,
        )
        self.graph_written = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.graph_written = write_op_graph(self.model, Path(self.log_dir) / TRAIN_SUBDIR)


def write_op_graph(model: Any, log_dir: Path) -> bool:
    """Write the TF op graph of ``model``'s inference pass to an event file in ``log_dir``; False if it
    cannot be traced."""
    spec = tf.TensorSpec((None, *tuple(model.inputs[0].shape[1:])), tf.float32, name="image")
    forward = tf.function(lambda images: model(model_inputs(model, images), training=False))
    try:
        graph = forward.get_concrete_function(spec).graph
    except Exception:  # tracing is best effort: the run's scalars matter more than its picture
        return False
    writer = tf.summary.create_file_writer(str(log_dir))
    try:
        with writer.as_default():
            tf.summary.graph(graph)
        writer.flush()
    finally:
        writer.close()
    return True


def tensorboard_callback(log_dir: Path) -> Any:
    """The callback writing a run's TensorBoard logs to ``log_dir`` (:class:`RunTensorBoard`)."""
    return RunTensorBoard(log_dir)
