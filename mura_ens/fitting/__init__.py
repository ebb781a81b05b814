"""The ``fitted`` ensemble: per body part member weights, a calibrator and a threshold, fitted on labelled studies.

TF-free (numpy, pandas, scikit-learn, scipy). Modules, one idea each:

- :mod:`.settings` — :class:`FitSettings`, validated options;
- :mod:`.weights` — the weighted mean and the log-loss-optimal weights;
- :mod:`.pooling` — member roles, the weights pooled across parts with member selection, part priors;
- :mod:`.partweights` — which weights each part uses (plain / pooled / pooled moved toward its own) and their guards;
- :mod:`.validate` — every field of an ``ensemble.json`` checked on load;
- :mod:`.summary` — the table rows (what each part uses) for the CLI and the report;
- :mod:`.calibration` — identity / Platt / isotonic calibrators as plain numbers;
- :mod:`.thresholds` — kappa / Youden thresholds and shrinkage;
- :mod:`.quality` — study-level quality, patient-grouped folds;
- :mod:`.table` — the fitting set checked and turned into arrays;
- :mod:`.fit` — :func:`fit_ensemble` (the method: see its docstring and docs/ensembles.md);
- :mod:`.ensemble` — :class:`FittedEnsemble` (apply, member checks, overlap, ``ensemble.json``);
- :mod:`.scored` — fitting from a ``score`` output folder.
"""

from .ensemble import FittedEnsemble, Member, PartModel
from .fit import fit_ensemble
from .scored import fit_scored_dir, members_from_models, read_studies
from .settings import CALIBRATIONS, THRESHOLD_RULES, FitSettings

__all__ = [
    "CALIBRATIONS",
    "THRESHOLD_RULES",
    "FitSettings",
    "FittedEnsemble",
    "Member",
    "PartModel",
    "fit_ensemble",
    "fit_scored_dir",
    "members_from_models",
    "read_studies",
]
