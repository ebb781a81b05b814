"""mura-ens: abnormality detection on MURA-layout radiographs.

Keras model plugins are trained and exported to ONNX; scoring runs on ONNX
Runtime only (no TensorFlow), averages image probabilities per study and
combines models per body part.

The Python API (docs/api.md) mirrors the ``mura-ens`` commands::

    import mura_ens

    runs = mura_ens.train("custom_cnn", "data/MURA-v1.1", "runs", epochs=3, image_size=48)
    run = mura_ens.load_run(runs[0].path)          # history, best_epoch(), evaluation, plot_history()
    result = mura_ens.score("data/MURA-v1.1/valid", "results", models="runs", ensemble="body_part")
    mura_ens.metrics_table(result.metrics).loc["study"]

Names are imported on first use (module ``__getattr__``), so ``import mura_ens``
loads neither pandas nor TensorFlow; only training and export import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module defining it (imported on first access).
_LAZY = {
    "train": "mura_ens.api",
    "export": "mura_ens.api",
    "score": "mura_ens.api",
    "evaluate": "mura_ens.api",
    "fit_ensemble": "mura_ens.api",
    "list_plugins": "mura_ens.api",
    "ExportResult": "mura_ens.api",
    "load_run": "mura_ens.runs",
    "Run": "mura_ens.runs",
    "metrics_table": "mura_ens.runs",
    "roc_figure": "mura_ens.runs",
    "compare_runs": "mura_ens.compare",
    "write_comparison": "mura_ens.compare",
    "Comparison": "mura_ens.compare",
    "TrainOptions": "mura_ens.training.options",
    "ScoreSettings": "mura_ens.scoring.score",
    "ScoreResult": "mura_ens.scoring.score",
    "FitSettings": "mura_ens.fitting.settings",
    "FittedEnsemble": "mura_ens.fitting.ensemble",
    "BootstrapSettings": "mura_ens.metrics",
    "UsageError": "mura_ens.errors",
    "MissingExtraError": "mura_ens.errors",
}

__all__ = [  # the names of _LAZY, spelled out for linters and IDEs (a test checks they agree)
    "__version__",
    "train",
    "export",
    "score",
    "evaluate",
    "fit_ensemble",
    "list_plugins",
    "ExportResult",
    "load_run",
    "Run",
    "metrics_table",
    "roc_figure",
    "compare_runs",
    "write_comparison",
    "Comparison",
    "TrainOptions",
    "ScoreSettings",
    "ScoreResult",
    "FitSettings",
    "FittedEnsemble",
    "BootstrapSettings",
    "UsageError",
    "MissingExtraError",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these
    from .api import ExportResult, evaluate, export, fit_ensemble, list_plugins, score, train
    from .compare import Comparison, compare_runs, write_comparison
    from .errors import MissingExtraError, UsageError
    from .fitting.ensemble import FittedEnsemble
    from .fitting.settings import FitSettings
    from .metrics import BootstrapSettings
    from .runs import Run, load_run, metrics_table, roc_figure
    from .scoring.score import ScoreResult, ScoreSettings
    from .training.options import TrainOptions


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mura_ens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
