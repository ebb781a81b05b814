"""`mura-ens plugins`: the table of model plugins found through entry points."""

from __future__ import annotations

import json

import typer

from ._app import app


@app.command("plugins")
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also list each plugin's hyper-parameters (-p key=value): default, help."
    ),
) -> None:
    """List model plugins: name, kind, body parts, default input size, providing distribution, status.

    With --verbose, a second table lists every hyper-parameter that `train -p key=value` may set:
    its default, allowed values and a one-line help.

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
    elif verbose:
        console.print(parameter_table(rows))


def parameter_table(rows: list[dict]):
    """The rich table of every plugin's hyper-parameters: plugin, parameter, default, allowed values, help."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="hyper-parameters (train --plugin NAME -p key=value)")
    table.add_column("plugin", no_wrap=True, style="bold")
    table.add_column("parameter", no_wrap=True)
    table.add_column("default", no_wrap=True)
    table.add_column("allowed", no_wrap=True)
    table.add_column("help")
    for row in rows:
        for index, param in enumerate(row.get("parameters", [])):
            default = param["default"]
            shown = json.dumps(default) if isinstance(default, (bool, str)) or default is None else str(default)
            table.add_row(
                row["name"] if index == 0 else "",
                param["name"],
                escape(shown),
                escape(" | ".join(str(c) for c in param["choices"])),
                escape(param["help"]),
            )
        table.add_section()
    return table
