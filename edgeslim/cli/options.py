"""The options every model command shares, with one meaning: `--inputs`, `--shape`, `--device`, `--json`
(and `--accelerator` on the commands that train: train, run, distill, search).

`measure`, `fit`, `arena`, `compile`, `optimize` and `export` take them from here, so they read the same
everywhere: `--inputs FILE.npz` holds one array per model input name (samples on axis 0, as `optimize`'s
calibration data); `--shape NAME=D0,D1,...` sets symbolic dims for synthetic inputs (values suited to each
dtype); `--device` names a device profile (or a YAML path) for flash, arena, fit and energy; `--json`
prints machine-readable output.
"""

from __future__ import annotations

from typing import Any

import typer

INPUTS_HELP = ".npz with one array per model input name (samples on axis 0); default: synthetic inputs"
SHAPE_HELP = "NAME=D0,D1,... sizes for an input's symbolic dims when no --inputs is given (repeat)"
DEVICE_HELP = "device profile name or YAML path (flash, arena, fit, energy)"


def inputs_option(*aliases: str, help: str = INPUTS_HELP) -> Any:
    return typer.Option(None, "--inputs", *aliases, help=help)


def shape_option() -> Any:
    return typer.Option([], "--shape", help=SHAPE_HELP)


def device_option(default: str | None = None, help: str = DEVICE_HELP) -> Any:
    return typer.Option(default, "--device", "-d", help=help + (f" (default {default})" if default else ""))


def accelerator_option() -> Any:
    from edgeslim.accelerator import ACCELERATORS

    return typer.Option("auto", "--accelerator", help=f"where training runs: {' | '.join(ACCELERATORS)} (auto: the "
                        "GPU PyTorch sees, else the CPU); export and measurements are the same either way")


def json_option() -> Any:
    return typer.Option(False, "--json", help="machine-readable output")
