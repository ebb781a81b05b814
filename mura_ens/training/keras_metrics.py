"""Keras metrics for training logs: AUC, accuracy and Cohen's kappa, blind to sample weights.

Training feeds the MURA class weights as per-sample weights, and Keras passes
sample weights to compiled metrics too; these metrics drop them so that the
train and val columns of ``history.tsv`` are plain, comparable figures.
Imports Keras at module level: import this module only inside functions.
"""

from __future__ import annotations

from typing import Any

from .tf_runtime import import_tensorflow

tf, keras = import_tensorflow()
ops = keras.ops
# Keras is untyped here (no stubs): its base classes are taken as Any-typed names mypy can subclass.
_AUC: Any = keras.metrics.AUC
_BinaryAccuracy: Any = keras.metrics.BinaryAccuracy
_Metric: Any = keras.metrics.Metric


@keras.saving.register_keras_serializable(package="mura_ens")
class UnweightedAUC(_AUC):
    """ROC AUC (Keras' 200-threshold approximation), ignoring sample weights; NaN (undefined) unless both
    classes were seen (Keras itself would report 0)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred)

    def result(self):
        positives = self.true_positives[0] + self.false_negatives[0]
        negatives = self.false_positives[0] + self.true_negatives[0]
        defined = ops.logical_and(positives > 0, negatives > 0)
        return ops.where(defined, super().result(), float("nan"))


@keras.saving.register_keras_serializable(package="mura_ens")
class UnweightedAccuracy(_BinaryAccuracy):
    """Accuracy at threshold 0.5 (``prob > 0.5``), ignoring sample weights."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred)


@keras.saving.register_keras_serializable(package="mura_ens")
class BinaryKappa(_Metric):
    """Cohen's kappa of ``prob > threshold`` against 0/1 labels, from a running confusion matrix.

    Equals ``sklearn.metrics.cohen_kappa_score`` on the same rows; NaN where
    kappa is undefined (no rows, or all labels and predictions of one class), as scikit-learn.
    """

    def __init__(self, threshold: float = 0.5, name: str = "kappa", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        y_pred = ops.reshape(ops.cast(ops.greater(ops.cast(y_pred, "float32"), self.threshold), "float32"), (-1,))
        tp = ops.sum(y_true * y_pred)
        fp = ops.sum((1.0 - y_true) * y_pred)
        fn = ops.sum(y_true * (1.0 - y_pred))
        tn = ops.sum((1.0 - y_true) * (1.0 - y_pred))
        self.counts.assign(self.counts + ops.stack([tp, fp, fn, tn]))

    def result(self):
        tp, fp, fn, tn = self.counts[0], self.counts[1], self.counts[2], self.counts[3]
        n = tp + fp + fn + tn
        safe_n = ops.maximum(n, 1.0)
        observed = (tp + tn) / safe_n
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (safe_n * safe_n)
        denominator = 1.0 - expected
        defined = ops.logical_and(n > 0, denominator > 1e-7)
        return ops.where(defined, (observed - expected) / ops.maximum(denominator, 1e-7), float("nan"))

    def reset_state(self):
        self.counts.assign(ops.zeros((4,), dtype="float32"))

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def training_metrics() -> list:
    """The metrics compiled into every training run, named as in ``history.tsv``."""
    return [UnweightedAUC(name="auc"), UnweightedAccuracy(name="accuracy"), BinaryKappa(name="kappa")]
