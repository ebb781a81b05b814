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
        int,
        typer.Option(
            "--studies-per-part",
            help="Studies per body part (train + valid): with 'mura', the mean over the parts, which get MURA's "
            "proportions (wrist most, humerus least); with 'easy', the count of every part.",
        ),
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
    difficulty: Annotated[
        str,
        typer.Option(
            "--difficulty",
            help="'mura': subtle, varied findings among confounders, MURA's proportions and label noise; "
            "'easy': one obvious injury per abnormal study (fast tests).",
        ),
    ] = "mura",
) -> None:
    """Synthetic MURA: bone-like shapes per body part, findings with ground-truth boxes (findings.csv),
    deterministic per seed. See docs/synthetic.md."""
    from ..data.synth import make_synthetic_mura
    from ..io import check_writable_folder, removed_on_failure, write_errors_as_usage

    check_writable_folder(out, what="OUT")  # a read-only OUT: one line before anything is made
    tree = (out / "MURA-v1.1", out / "synth_summary.json")
    # a failure while writing (full disk, Ctrl-C) leaves no half tree; with --overwrite the old one is gone already
    written = (OSError, KeyboardInterrupt) if overwrite else (BaseException,)
    with (
        write_errors_as_usage(str(out)),
        removed_on_failure(out),
        removed_on_failure(*tree, always=overwrite, errors=written),
    ):
        summary = make_synthetic_mura(
            out,
            studies_per_part=studies_per_part,
            size=size,
            seed=seed,
            quirks=quirks,
            valid_fraction=valid_fraction,
            overwrite=overwrite,
            difficulty=difficulty,
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
    rows = summary["findings"]["rows"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in rows.items()) or "none"
    typer.echo(f"findings: {sum(rows.values())} boxes ({kinds}) in {summary['findings']['path']}")
    if summary["label_noise"]:
        typer.echo(f"label noise: {len(summary['label_noise'])} studies whose CSV label disagrees with their pixels")
    typer.echo(f"wrote {summary['root']} (summary: {Path(summary['out']) / 'synth_summary.json'})")
