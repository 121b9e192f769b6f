"""`edgeslim models`, `passes`, `recipes`, `tasks` and `devices`: what edgeslim knows, as tables or JSON."""

from __future__ import annotations

import typer
from rich.table import Table

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.report.results import human_bytes


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the model zoo with parameters and MACs at each model's reference input."""
    rows = api.list_models()
    if as_json:
        emit_json(rows)
        return
    _print_table("edgeslim model zoo (counts at the reference input)",
                 ("name", "about", "reference input", "params", "MACs"),
                 [(r["name"], r["about"], "x".join(map(str, r["ref_input"])), f"{r['params']:,}", f"{r['macs']:,}")
                  for r in rows])


@app.command("passes")
def passes_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
               python: bool = typer.Option(False, "--python", help="the config class of each pass, as the import "
                                           "line for `api.compress(net, Config(...), task)`")) -> None:
    """List the passes a recipe may use, with their config fields and defaults."""
    rows = api.list_passes()
    if as_json:
        emit_json(rows)
        return
    if python:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            module, _, cls = r["config"].rpartition(".")
            typer.echo(f"{r['name']:<{width}}  from {module} import {cls}")
        return
    _print_table("recipe passes (name: {field: value, ...})",
                 ("name", "kind", "what it does", "fields (defaults)"),
                 [(r["name"], r["kind"], r["about"], ", ".join(f"{k}={v}" for k, v in r["fields"].items()))
                  for r in rows])


@app.command("recipes")
def recipes_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the built-in recipes (run one by name: `edgeslim run structured-50 --model ...`)."""
    rows = api.list_recipes()
    if as_json:
        emit_json(rows)
        return
    _print_table("built-in recipes (edgeslim run NAME ...; a YAML path works too)", ("name", "what it does"),
                 [(r["name"], r["about"]) for r in rows])


@app.command("tasks")
def tasks_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List built-in tasks and the user-data formats a --task path may take."""
    info = api.list_tasks()
    if as_json:
        emit_json(info)
        return
    for r in info["builtin"] + info["text"]:
        console.print(f"[bold]{r['name']}[/bold]  {r['about']}")
    console.print("\nYour own data (--task PATH):")
    for f in info["formats"]:
        console.print(f"  - {f}")


@app.command("devices")
def devices_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
                template: bool = typer.Option(False, "--template", help="print a commented profile to copy and edit")
                ) -> None:
    """List the built-in device profiles (pass --device NAME or a YAML path of your own)."""
    if template:
        from edgeslim.devices import template as device_template

        print(device_template(), end="")
        return
    devs = api.list_devices()
    if as_json:
        emit_json([d.model_dump() for d in devs])
        return
    _print_table("edgeslim device profiles",
                 ("name", "description", "flash", "RAM (arena)", "int8 MAC/s", "fp32 MAC/s", "active power"),
                 [(d.name, d.description, human_bytes(d.flash_bytes), human_bytes(d.sram_bytes),
                   f"{d.macs_per_second('int8') / 1e9:.3g} G", f"{d.macs_per_second('fp32') / 1e9:.3g} G",
                   f"{d.active_power_mw:g} mW") for d in devs])


def _print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    console.print(t)
