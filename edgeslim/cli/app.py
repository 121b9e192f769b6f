"""The `edgeslim` Typer app, its console, JSON output and the error handling every command shares.

Exit codes: 0 success, 1 a user error (one line, no traceback), 2 an internal error (a bug: please
report; set EDGESLIM_DEBUG=1 for the traceback). Command modules (`edgeslim.cli.<group>`) add their
commands to `app`; `edgeslim.cli` imports them all, so `main` there runs the full CLI.
"""

from __future__ import annotations

import json
import os
import sys

import typer
from rich.console import Console

from edgeslim.errors import EdgeslimError

app = typer.Typer(
    help="Make neural networks small, fast and frugal enough for edge devices, and prove it.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI: do not squeeze tables to 80


def emit_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def main() -> None:
    debug = bool(os.environ.get("EDGESLIM_DEBUG"))
    try:
        app(standalone_mode=False)
    except EdgeslimError as e:
        from rich.markup import escape  # messages hold brackets: paths, `pip install 'edgeslim[litert]'`

        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # a usage error from Typer's (vendored) click
            e.show()
            sys.exit(1)
        if debug:
            raise
        Console(stderr=True).print(
            f"[red]internal error:[/red] {type(e).__name__}: {e} (a bug in edgeslim; EDGESLIM_DEBUG=1 shows "
            "the traceback)", highlight=False, soft_wrap=True,
        )
        sys.exit(2)
