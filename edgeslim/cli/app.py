"""The `edgeslim` Typer app, its console, JSON output and the error handling every command shares.

Exit codes: 0 success, 1 a user error (one line, no traceback), 2 an internal error (a bug: please
report; set EDGESLIM_DEBUG=1 for the traceback), 130 / 143 interrupted by SIGINT / SIGTERM (one line
saying what and the command that resumes; `edgeslim.interrupt`, `edgeslim.exitcodes`). Command modules (`edgeslim.cli.<group>`) add their
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


def _print_version(value: bool) -> None:
    if value:
        import edgeslim

        typer.echo(f"edgeslim {edgeslim.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="print the version and exit")) -> None:
    """Make neural networks small, fast and frugal enough for edge devices, and prove it."""


def emit_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def main() -> None:
    from edgeslim import exitcodes, interrupt

    debug = bool(os.environ.get("EDGESLIM_DEBUG"))
    restore = interrupt.install()  # SIGINT/SIGTERM: one line, exit 130/143 (edgeslim.interrupt)
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # a KeyboardInterrupt that Typer caught itself (no handler installed) and returned
            _error_line(f"interrupted; resume with the same command: {exitcodes.command_line()}", "interrupted")
        sys.exit(rc if isinstance(rc, int) else 0)
    except interrupt.Interrupted as e:
        if debug:
            import traceback

            traceback.print_exc()
        _error_line(e.message(exitcodes.command_line()), "interrupted")
        sys.exit(e.exit_code)
    except EdgeslimError as e:
        _error_line(str(e))
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
        if exitcodes.is_environment_error(e):  # disk full, read-only folder, permissions: not our bug
            _error_line(exitcodes.os_error_line(e))  # type: ignore[arg-type]
            sys.exit(1)
        _error_line(exitcodes.internal_line(e), "internal error")
        sys.exit(2)
    finally:
        restore()


def _error_line(msg: str, label: str = "error") -> None:
    """One line on stderr, whatever a library put in the message."""
    from rich.markup import escape  # messages hold brackets: paths, `pip install 'edgeslim[litert]'`

    msg = " ".join(msg.split())
    Console(stderr=True).print(f"[red]{label}:[/red] {escape(msg)}", highlight=False, soft_wrap=True)
