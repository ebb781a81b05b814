"""`mura-ens synth`: write a synthetic MURA-layout dataset with its official-style CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Argument(help="Folder to create; the data goes to OUT/MURA-v1.1.", show_default=False)],
    studies_per_part: Annotated[
        int, typer.Option("--studies-per-part", help="Studies per body part (train + valid).")
    ] = 12,
    size: Annotated[int, typer.Option("--size", help="Longest image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same bytes.")] = 0,
    quirks: Annotated[
        bool,
        typer.Option(
            "--quirks/--no-quirks", help="Plant MURA quirks: ._ file, truncated PNG, zero-byte PNG, relabelled study."
        ),
    ] = True,
    valid_fraction: Annotated[
        float, typer.Option("--valid-fraction", help="Share of studies (by patient) in valid/.")
    ] = 0.2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT/MURA-v1.1.")] = False,
) -> None:
    """Synthetic MURA: bone-like shapes per body part, learnable abnormalities, deterministic per seed."""
    from ..data.synth import make_synthetic_mura

    summary = make_synthetic_mura(
        out,
        studies_per_part=studies_per_part,
        size=size,
        seed=seed,
        quirks=quirks,
        valid_fraction=valid_fraction,
        overwrite=overwrite,
    )
    for split, totals in summary["totals"].items():
        typer.echo(
            f"{split}: {totals['studies']} studies ({totals['abnormal']} abnormal, {totals['normal']} normal), "
            f"{totals['images']} images, {summary['patients'][split]} patients"
        )
    for name, path in summary["quirk_files"].items():
        typer.echo(f"quirk {name}: {path}")
    if summary["relabelled_study"]:
        r = summary["relabelled_study"]
        typer.echo(f"quirk relabelled study: {r['path']} (folder says {r['folder_label']}, CSV says {r['csv_label']})")
    if summary["shared_patient"]:
        s = summary["shared_patient"]
        typer.echo(f"patient {s['patient']} appears under {' and '.join(s['body_parts'])}")
    typer.echo(f"wrote {summary['root']} (summary: {Path(summary['out']) / 'synth_summary.json'})")
