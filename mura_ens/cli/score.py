"""`mura-ens score`: score images with ONNX models, ensemble per body part, write tables, metrics and a report.

A thin wrapper over :func:`mura_ens.scoring.score.score`; heavy imports
happen inside the command so that ``mura-ens --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command("score")
def score_command(
    input: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT", help="MURA-layout folder (any depth), folder with the official CSVs, or manifest CSV."
        ),
    ],
    models: Annotated[
        Path | None, typer.Option("--models", metavar="DIR", help="Folder searched recursively for *.onnx models.")
    ] = None,
    model: Annotated[
        list[Path] | None, typer.Option("--model", metavar="FILE", help="One ONNX model file (repeatable).")
    ] = None,
    ensemble: Annotated[
        str,
        typer.Option(
            metavar="body_part|mean",
            help="body_part: mean of the models serving the study's part; mean: mean of the generalists.",
        ),
    ] = "body_part",
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")] = Path("results"),
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Images per inference call.")] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Decode threads (default: CPUs, at most 4); with --backend dask and no scheduler: local worker processes (default: one per CPU).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(metavar="P", help="Decision threshold (default: the models' own if they agree, else 0.5)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the interrupted run in --out without re-scoring finished studies."),
    ] = False,
    providers: Annotated[
        list[str] | None,
        typer.Option(
            "--providers",
            metavar="NAMES",
            help="onnxruntime execution providers, e.g. cpu or cuda,cpu (default: CUDA if available, else CPU).",
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(metavar="fp32|int8", help="fp32 or int8: which model file of each run folder to use.")
    ] = "fp32",
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: only on a terminal).")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(metavar="local|dask", help="local: this machine; dask: a Dask cluster (needs the [dask] extra)."),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Dask scheduler, e.g. tcp://host:8786, or a scheduler file (default: $DASK_SCHEDULER_ADDRESS; neither: a local cluster).",
        ),
    ] = None,
    ship_models: Annotated[
        bool,
        typer.Option(
            "--ship-models",
            help="With --backend dask: send the model files to the workers instead of reading them at the same paths there.",
        ),
    ] = False,
) -> None:
    """Score every image with every applicable ONNX model and write images.csv, studies.csv, metrics.json, report.html."""
    import sys
    import warnings

    from rich.console import Console

    from ..scoring.score import score

    try:
        with warnings.catch_warnings(record=True) as caught:  # shown below as one line each
            result = score(
                input,
                models_dir=models,
                model_files=model or (),
                ensemble=ensemble,
                out=out,
                batch_size=batch_size,
                workers=workers,
                threshold=threshold,
                resume=resume,
                providers=providers,
                precision=precision,
                progress=progress,
                backend=backend,
                scheduler=scheduler,
                ship_models=ship_models,
            )
    except KeyboardInterrupt:
        print(f"mura-ens: finished batches are journalled in {out}; rerun with --resume to continue", file=sys.stderr)
        raise
    for w in caught:
        print(f"mura-ens: warning: {w.message}", file=sys.stderr)
    for note in result.notes:
        print(f"mura-ens: {note}", file=sys.stderr)
    print_summary(result, Console())


def print_summary(result, console) -> None:
    """Per-body-part metric tables (ensemble, then each model), counts, and where the files are.

    Plain lines go through ``print`` (never wrapped, easy to grep); tables through the rich ``console``.
    """
    from ..metrics import format_metrics_table

    images, studies = result.images, result.studies
    n_ok = int((images["status"] == "ok").sum())
    print(
        f"{len(result.models)} models ({', '.join(m.name for m in result.models)}), ensemble {result.ensemble}, "
        f"threshold {result.threshold:g}, providers {', '.join(result.providers)}"
    )
    print(
        f"images: {n_ok} scored of {len(images)} listed; studies: {int((studies['status'] == 'ok').sum())} scored of {len(studies)}"
    )
    failed = images.loc[images["status"] != "ok", "status"].value_counts()
    if len(failed):
        print("not scored: " + ", ".join(f"{status} {count}" for status, count in failed.items()))
    if result.metrics is not None:
        console.print(
            format_metrics_table(result.metrics["study"], title=f"Study-level metrics, ensemble ({result.ensemble})")
        )
        specialists: dict[str, dict] = {}
        for spec in result.models:
            levels = result.metrics["models"].get(spec.name)
            if levels is None:
                continue
            if spec.is_generalist:
                console.print(format_metrics_table(levels["study"], title=f"Study-level metrics, {spec.name}"))
                continue
            # A specialist only has rows of its own part(s): one joint table reads better than one each.
            for part, group in levels["study"].get("by_body_part", {}).items():
                key = part if part not in specialists else f"{part} {spec.name}"
                specialists[key] = group
        if specialists:
            console.print(
                format_metrics_table(
                    {"by_body_part": specialists}, title="Study-level metrics, specialists on their own parts"
                )
            )
    else:
        print("no labels in the input: metrics skipped")
    for path in result.paths.values():
        print(f"wrote {path}")
    if "report" in result.paths:
        print(f"report: {result.paths['report']}")
