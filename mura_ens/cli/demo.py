"""`mura-ens demo`: the whole pipeline on synthetic data (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command("demo")
def demo_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for data, runs and results (rebuilt on rerun).")
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller data and models, 1-2 epochs: under 2 minutes.")
    ] = False,
    seed: Annotated[int, typer.Option(metavar="K", help="Seed of the synthetic data and of training.")] = 0,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Scoring progress bar (default: only on a terminal)."),
    ] = None,
) -> None:
    """Synthetic MURA -> train custom_cnn + specialists -> ONNX -> score the valid split -> report.html."""
    import time

    from rich.console import Console

    from ..demo import run_demo
    from ._summary import print_score_summary

    started = time.perf_counter()
    result = run_demo(out, quick=quick, seed=seed, progress=progress)
    print_score_summary(result.score, Console())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"demo finished in {time.perf_counter() - started:.0f} s ({steps})")
    print(f"open {result.results / 'report.html'}")
