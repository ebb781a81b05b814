"""``mura-ens compare``: finished runs side by side (curves, test metrics, differing parameters); no TensorFlow.

- :mod:`.collect`: arguments (folders, folders of runs, globs) -> finished run folders, the rest skipped with a reason;
- :mod:`.table`: :func:`compare_runs` -> :class:`Comparison` (data only);
- :mod:`.figures`: the training curves overlaid (matplotlib, Agg);
- :mod:`.page`: :func:`write_comparison` -> ``compare.html`` + ``curves_{loss,auc,kappa}.png``.

Example::

    from mura_ens.compare import compare_runs, write_comparison

    comparison = compare_runs(["runs/densenet201*"], metric="kappa")
    comparison.parameters          # only what differs between the runs
    comparison.metrics.loc[(comparison.names[0], "study", "overall")]
    write_comparison(comparison, "compare-out")
"""

from .collect import FoundRuns, SkippedFolder, find_run_dirs
from .page import ComparisonFiles, write_comparison
from .table import COMPARED_METRICS, Comparison, NoRunToCompare, compare_runs, flatten_config

__all__ = [
    "COMPARED_METRICS",
    "Comparison",
    "ComparisonFiles",
    "FoundRuns",
    "NoRunToCompare",
    "SkippedFolder",
    "compare_runs",
    "find_run_dirs",
    "flatten_config",
    "write_comparison",
]
