"""Metrics and report: seconds of the bootstrap, of ``metrics.json`` and of ``report.html`` for a scoring-sized run.

    python benchmarks/metrics_report.py [--quick] [--repeats N]

Figures (medians of ``--repeats`` runs in this process, after one warm-up):

- ``bootstrap_seconds[1000x3200]``: :func:`mura_ens.metrics.bootstrap_intervals`, 1,000
  resamples of 3,200 rows (the size of MURA's valid split in images);
- ``metrics_json_seconds``: :func:`mura_ens.metrics.build_metrics` of a run of 7 body
  parts x 200 studies x 2-3 images and 3 models (study and image level, each model too);
- ``report_seconds``: :func:`mura_ens.report.render_report` of that run (tables, ROC
  figure, confusion matrix, provenance).

These were wall-clock asserts in tests/test_metrics.py and tests/test_report.py; a
unit test asserts results, the speed is printed here.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, header, median, note, result


def scoring_like_run(studies_per_part: int, models: list[str], seed: int = 0):
    """(studies, images, metrics, model infos) shaped like a scoring run's."""
    import numpy as np
    import pandas as pd

    from mura_ens.constants import BODY_PARTS
    from mura_ens.metrics import ModelColumn, build_metrics, study_probabilities

    rng = np.random.default_rng(seed)
    rows = []
    for part in BODY_PARTS:
        for s in range(studies_per_part):
            label = int(rng.random() < 0.4)
            study = f"valid/{part}/patient{s:05d}/study1"
            for i in range(int(rng.integers(2, 4))):
                row = {"path": f"/data/{study}/image{i + 1}.png", "study": study, "patient": f"patient{s:05d}"}
                row.update(body_part=part, label=label, status="ok", error="")
                for m in models:
                    row[f"prob__{m}"] = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1))
                rows.append(row)
    images = pd.DataFrame(rows)
    images["label"] = images["label"].astype("Int64")
    columns = [f"prob__{m}" for m in models]
    images["prob"] = images[columns].mean(axis=1)
    studies = study_probabilities(images, prob_cols=[*columns, "prob"])
    studies["pred"] = (studies["prob"] > 0.5).astype(int)
    studies["status"] = "ok"
    members = [ModelColumn(m, f"prob__{m}") for m in models]

    def metrics():
        return build_metrics(studies, images, threshold=0.5, ensemble="body_part", models=members)

    infos = [{"name": m, "path": f"runs/{m}/model.onnx", "metadata": {"plugin": m}, "card": None} for m in models]
    return studies, images, metrics, infos


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    header("metrics_report.py", args)
    warnings.simplefilter("ignore")  # one-class groups are not what is measured

    import numpy as np

    from mura_ens.metrics import BootstrapSettings, bootstrap_intervals
    from mura_ens.report import render_report

    rng = np.random.default_rng(0)
    n_rows = 400 if args.quick else 3200
    y = (rng.random(n_rows) < 0.4).astype(int)
    p = np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0, 1)
    settings = BootstrapSettings(n_resamples=1000, seed=0)
    bootstrap_intervals(y[:100], p[:100], bootstrap=BootstrapSettings(n_resamples=10))  # warm-up
    values = [timed(lambda: bootstrap_intervals(y, p, bootstrap=settings)) for _ in range(repeats)]
    note(f"bootstrap runs (s): {', '.join(f'{v:.3f}' for v in values)}")
    result(f"bootstrap_seconds[1000x{n_rows}]", median(values), "s")

    studies, images, metrics, infos = scoring_like_run(20 if args.quick else 200, ["m1", "m2", "m3"])
    built = metrics()  # warm-up, and the metrics the report is given
    values = [timed(metrics) for _ in range(repeats)]
    note(
        f"metrics.json runs (s): {', '.join(f'{v:.3f}' for v in values)}; {len(studies)} studies, {len(images)} images"
    )
    result("metrics_json_seconds", median(values), "s")

    def report():
        render_report(studies=studies, images=images, metrics=built, models=infos, provenance={"date": "2026-01-01"})

    report()  # warm-up: matplotlib's first figure
    values = [timed(report) for _ in range(repeats)]
    note(f"report runs (s): {', '.join(f'{v:.3f}' for v in values)}")
    result("report_seconds", median(values), "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
