"""`mura-ens plugins`: the table of model plugins found through entry points."""

from __future__ import annotations

import json

import typer

from ._app import app


@app.command("plugins")
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """List model plugins: name, kind, body parts, default input size, providing distribution, status.

    Plugins are found through the 'mura_ens.plugins' entry-point group; set
    MURA_ENS_PLUGINS=a,b to load only some. A plugin that fails to import is
    listed as broken.
    """
    from ..api import list_plugins

    rows = list_plugins()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column, options in (
        ("name", {"no_wrap": True, "style": "bold"}),
        ("kind", {"no_wrap": True}),
        ("body parts", {}),
        ("input", {"justify": "right", "no_wrap": True}),
        ("weights", {"no_wrap": True}),
        ("provided by", {"no_wrap": True}),
        ("status", {"no_wrap": True}),
        ("description (or why it is broken)", {}),
    ):
        table.add_column(column, **options)
    for row in rows:
        ok = row["status"] == "ok"
        table.add_row(
            row["name"],
            row["kind"],
            (", ".join(row["body_parts"]) or "all") if ok else "",
            str(row["input_size"]) if row["input_size"] else "",
            row["weights"] or "",
            f"{row['distribution']} {row['version']}".strip(),
            "ok" if ok else "[red]broken[/red]",
            row["description"] if ok else escape(row["status"].removeprefix("broken: ")),
        )
    console = Console()
    if not console.is_terminal:  # pipes and captures: one row per line, whatever the width
        console = Console(width=240)
    console.print(table)
    if not rows:
        console.print("no plugins found (entry-point group mura_ens.plugins)")
