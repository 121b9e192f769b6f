"""Compression passes. Importing this package registers every pass module in it (one file a technique)."""

import importlib
import pkgutil

from edgeslim.passes.base import (
    PASSES,
    PassConfig,
    PassResult,
    RunContext,
    get_pass,
    pass_for_config,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["PASSES", "PassConfig", "PassResult", "RunContext", "get_pass", "pass_for_config", "register"]
