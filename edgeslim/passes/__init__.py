"""Compression passes, one module per pass, named after it (`magnitude_prune.py` registers
`magnitude_prune`). Importing this package registers every pass and the fine-tuning hooks
(`finetune_hooks`). The techniques' building blocks live in `edgeslim.prune`, `edgeslim.quant`,
`edgeslim.distill`, `edgeslim.models.lowrank` and the file formats in `edgeslim.formats`."""

import importlib
import pkgutil

from edgeslim.passes.base import (
    MODULE_KINDS,
    PASSES,
    SOURCE_KINDS,
    PassConfig,
    PassResult,
    RunContext,
    get_pass,
    pass_for_config,
    passes_for,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["MODULE_KINDS", "SOURCE_KINDS", "passes_for", "PASSES", "PassConfig", "PassResult", "RunContext", "get_pass", "pass_for_config", "register"]
