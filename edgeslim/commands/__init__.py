"""CLI commands beyond the core ones in `edgeslim.cli`: every module here is imported by the CLI and
adds its commands with `@app.command()` (`from edgeslim.cli import app, console`)."""

import importlib
import pkgutil


def load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
