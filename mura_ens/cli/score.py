"""`mura-ens score`: score images with ONNX models, ensemble per body part, write tables, metrics and a report.

A thin wrapper over :func:`mura_ens.score` (:func:`mura_ens.scoring.score.score`); heavy imports
happen inside the command so that ``mura-ens --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ._app import app, said_when_interrupted

_Input = Annotated[
    Path,
    typer.Argument(
        metavar="INPUT",
        help="MURA-layout folder (any depth; DICOM files anywhere in it), folder with the official CSVs, or manifest CSV.",
    ),
]
_Models = Annotated[
    Path | None, typer.Option("--models", metavar="DIR", help="Folder searched recursively for *.onnx models.")
]
_Model = Annotated[list[Path] | None, typer.Option("--model", metavar="FILE", help="One ONNX model file (repeatable).")]
_Ensemble = Annotated[
    str,
    typer.Option(
        metavar="body_part|mean|fitted",
        help="body_part: mean of the models serving the study's part; mean: mean of the generalists; "
        "fitted: the per-part weights, calibrators and thresholds of --ensemble-file.",
    ),
]
_EnsembleFile = Annotated[
    Path | None,
    typer.Option(
        "--ensemble-file",
        metavar="FILE",
        help="ensemble.json written by mura-ens fit-ensemble (with --ensemble fitted); its members must be the models found.",
    ),
]
_AllowMismatch = Annotated[
    bool,
    typer.Option(
        "--allow-mismatch",
        help="Apply --ensemble-file although it was fitted on scores of another --precision or --tta "
        "(a warning goes into metrics.json and the report).",
    ),
]
_Tta = Annotated[
    str,
    typer.Option(
        "--tta",
        metavar="none|flip",
        help="Test-time augmentation: flip = mean probability over each image and its horizontal mirror.",
    ),
]
_Explain = Annotated[
    str,
    typer.Option(
        "--explain",
        metavar="K|all",
        help="Heatmap overlays (XGrad-CAM by default, no TensorFlow) of the K studies of highest probability and, with labels, "
        "the K worst false positives and false negatives: heatmaps/ in --out and a gallery in the report (0: none). "
        "all: every labelled abnormal study too (for explain-eval), plus K=5 of each group.",
    ),
]
_ExplainMethod = Annotated[
    str,
    typer.Option(
        "--explain-method",
        metavar="xgradcam|hirescam|gradcam",
        help="How --explain makes a heatmap from the feature map and its gradient: xgradcam (default; the gradient "
        "averaged per channel, weighted by the channel's activation), hirescam (each cell's own gradient) or "
        "gradcam (the plain average). docs/explain.md.",
    ),
]
_Findings = Annotated[
    Path | None,
    typer.Option(
        "--findings",
        metavar="CSV",
        help="Ground-truth boxes (findings.csv: path, kind, x0, y0, x1, y1): score the heatmaps against them "
        "(pointing game, energy share; heatmaps/explain_eval.json and a table in the report). Needs --explain.",
    ),
]
_Labels = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        metavar="CSV",
        help="Labels to join onto the input: a CSV with label and study (study key or DICOM StudyInstanceUID) "
        "or path columns; they replace the folder names' labels (docs/dicom.md).",
    ),
]
_Pseudonymize = Annotated[
    bool,
    typer.Option(
        "--pseudonymize",
        help="Replace patient ids (and DICOM study UIDs) by keyed hashes (HMAC-SHA256) in every output file, "
        "paths included (docs/dicom.md).",
    ),
]
_PseudonymKey = Annotated[
    str | None,
    typer.Option("--pseudonym-key", metavar="KEY", help="Key of --pseudonymize (default: $MURA_ENS_PSEUDONYM_KEY)."),
]
_Out = Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")]
_BatchSize = Annotated[int, typer.Option("--batch-size", metavar="N", help="Images per inference call.")]
_Workers = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Decode threads (default: CPUs, at most 4); with --backend dask and no scheduler: local worker processes (default: one per CPU).",
    ),
]
_Threshold = Annotated[
    float | None,
    typer.Option(metavar="P", help="Decision threshold (default: the models' own if they agree, else 0.5)."),
]
_Resume = Annotated[
    bool, typer.Option("--resume", help="Continue the interrupted run in --out without re-scoring finished studies.")
]
_Providers = Annotated[
    list[str] | None,
    typer.Option(
        "--providers",
        metavar="NAMES",
        help="onnxruntime execution providers, e.g. cpu or cuda,cpu (default: CUDA if available, else CPU).",
    ),
]
_Precision = Annotated[
    str, typer.Option(metavar="fp32|int8", help="fp32 or int8: which model file of each run folder to use.")
]
_Progress = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: only on a terminal).")
]
_Backend = Annotated[
    str, typer.Option(metavar="local|dask", help="local: this machine; dask: a Dask cluster (needs the [dask] extra).")
]
_Scheduler = Annotated[
    str | None,
    typer.Option(
        metavar="ADDRESS",
        help="Dask scheduler, e.g. tcp://host:8786, or a scheduler file (default: $DASK_SCHEDULER_ADDRESS; neither: a local cluster).",
    ),
]
_ShipModels = Annotated[
    bool,
    typer.Option(
        "--ship-models",
        help="With --backend dask: send the model files to the workers instead of reading them at the same paths there.",
    ),
]


def _explain_count(text: str) -> int | str:
    """``--explain``'s K as an int when it is one (ScoreSettings refuses anything else, naming it)."""
    try:
        return int(text)
    except ValueError:
        return text


#: What Ctrl-C or SIGTERM during a run says (:func:`~._app.said_when_interrupted`); warnings: one line each.
_RESUME = "finished batches are journalled in {out}; rerun with --resume to continue"


@app.command("score")
def score_command(
    input: _Input,
    models: _Models = None,
    model: _Model = None,
    ensemble: _Ensemble = "body_part",
    ensemble_file: _EnsembleFile = None,
    allow_mismatch: _AllowMismatch = False,
    tta: _Tta = "none",
    explain: _Explain = "0",
    explain_method: _ExplainMethod = "xgradcam",
    findings: _Findings = None,
    labels: _Labels = None,
    pseudonymize: _Pseudonymize = False,
    pseudonym_key: _PseudonymKey = None,
    out: _Out = Path("results"),
    batch_size: _BatchSize = 32,
    workers: _Workers = None,
    threshold: _Threshold = None,
    resume: _Resume = False,
    providers: _Providers = None,
    precision: _Precision = "fp32",
    progress: _Progress = None,
    backend: _Backend = "local",
    scheduler: _Scheduler = None,
    ship_models: _ShipModels = False,
) -> None:
    """Score every image with every applicable ONNX model and write images.csv, studies.csv, models.json, metrics.json, report.html."""
    import sys
    import warnings

    _check_input_exists(input)
    from rich.console import Console

    from ..api import score
    from ..scoring.score import ScoreSettings
    from ._summary import print_score_summary

    settings = ScoreSettings(
        ensemble=ensemble,
        batch_size=batch_size,
        workers=workers,
        threshold=threshold,
        resume=resume,
        providers=tuple(providers) if providers is not None else None,
        precision=precision,
        tta=tta,
        ensemble_file=ensemble_file,
        allow_mismatch=allow_mismatch,
        explain=explain if explain.strip().lower() == "all" else _explain_count(explain),
        explain_method=explain_method,
        findings=findings,
        labels=labels,
        pseudonymize=pseudonymize,
        pseudonym_key=pseudonym_key,
    )
    with said_when_interrupted(_RESUME.format(out=out)), warnings.catch_warnings(record=True) as caught:
        result = score(
            input,
            out,
            models=models,
            model=model,
            settings=settings,
            backend=backend,
            progress=progress,
            scheduler=scheduler,
            ship_models=ship_models,
        )
    for w in caught:
        print(f"mura-ens: warning: {w.message}", file=sys.stderr)
    for note in result.notes:
        print(f"mura-ens: {note}", file=sys.stderr)
    print_score_summary(result, Console())


def _check_input_exists(input: Path) -> None:
    """A missing input, or a folder holding no file at all, is answered before the command's heavy imports
    (pandas, numpy: ~0.5 s of CPU); a folder with files is left to the scan, which names what it skipped."""
    from ..errors import UsageError

    if not input.exists():
        raise UsageError(f"input not found: {input}")
    if input.is_dir() and not _holds_a_file(input):
        raise UsageError(f"no images found in {input}")


def _holds_a_file(folder: Path) -> bool:
    """Whether the tree under ``folder`` holds anything but folders (stops at the first such entry)."""
    for _, _, files in os.walk(folder):
        if files:
            return True
    return False
