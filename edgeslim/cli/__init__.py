"""The `edgeslim` command: one module per command group, each only parsing options, calling
`edgeslim.api` and printing. Importing this package registers every command on `app`, in this order:

    train.py        train                    run.py          run, demo
    measure.py      measure, fit, arena      optimize.py     optimize, compile, export
    distill.py      distill, unpack          sensitivity.py  sensitivity
    quant_report.py quant-report             search.py       search
    info.py         models, passes, recipes, tasks, devices
"""

import importlib

from edgeslim.cli.app import app, console, emit_json, main

COMMAND_MODULES = ("train", "run", "measure", "optimize", "distill", "sensitivity", "quant_report", "search",
                   "info")
for _name in COMMAND_MODULES:  # each module adds its commands to `app` (the order of `edgeslim --help`)
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["app", "console", "emit_json", "main", "COMMAND_MODULES"]
