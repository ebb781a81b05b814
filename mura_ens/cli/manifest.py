"""`mura-ens manifest`: scan a MURA folder, official CSVs or a manifest into manifest.csv + skipped.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command("manifest")
def manifest_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="MURA-layout folder (any depth; DICOM files anywhere in it), folder holding the official CSVs, "
            "or a manifest CSV to validate.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest CSV to write; skipped.csv goes beside it.")] = Path(
        "manifest.csv"
    ),
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Folder the official CSV paths are relative to (the one holding MURA-v1.1/)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            metavar="CSV",
            help="Labels to join: a CSV with label and study (study key or DICOM StudyInstanceUID) or path columns.",
        ),
    ] = None,
    pseudonymize: Annotated[
        bool,
        typer.Option(
            "--pseudonymize",
            help="Replace patient ids (and DICOM study UIDs) by keyed hashes in both files, paths included (docs/dicom.md).",
        ),
    ] = False,
    pseudonym_key: Annotated[
        str | None,
        typer.Option(
            "--pseudonym-key", metavar="KEY", help="Key of --pseudonymize (default: $MURA_ENS_PSEUDONYM_KEY)."
        ),
    ] = None,
) -> None:
    """Write a manifest (path, study, patient, body_part, label, split) and list every skipped file."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ..data.manifest import build_manifest
    from ..pseudonym import key_for

    key = key_for(pseudonymize, pseudonym_key)
    result = build_manifest(source, out, root=root, labels=labels, pseudonym_key=key)
    summary = result["summary"]
    kinds = ["normal", "abnormal"] + (["unknown"] if summary.loc["all", "images_unknown"] else [])
    table = Table(
        title=f"{result['n_images']} images, {result['n_studies']} studies",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("body part", no_wrap=True)
    for level in ("studies", "images"):
        table.add_column(level, justify="right")
        for kind in kinds:
            table.add_column(kind, justify="right")
    for number, (part, row) in enumerate(summary.iterrows()):
        cells = []
        for level in ("studies", "images"):
            cells += [str(row[level])] + [str(row[f"{level}_{kind}"]) for kind in kinds]
        table.add_row(str(part), *cells, end_section=number == len(summary) - 2)
    Console().print(table)
    reasons = ", ".join(f"{reason}: {count}" for reason, count in result["skipped_reasons"].items())
    typer.echo(
        f"skipped {result['n_skipped']} files"
        + (f" ({reasons})" if reasons else "")
        + f", listed in {result['skipped_csv']}"
    )
    if result["unknown_parts"]:
        from ..data.layout import unknown_parts_text

        typer.echo(unknown_parts_text(result["unknown_parts"]) + ": their body_part is empty in the manifest")
    typer.echo(f"wrote {result['manifest']}")
