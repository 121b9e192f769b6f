"""Compression passes. Importing this package registers every built-in pass."""

from edgeslim.passes import prune, quantize  # noqa: F401  (registration side effects)
from edgeslim.passes.base import PASSES, PassConfig, PassResult, RunContext, get_pass, register

__all__ = ["PASSES", "PassConfig", "PassResult", "RunContext", "get_pass", "register"]
