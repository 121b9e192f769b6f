"""One exception type for user mistakes.

The CLI prints an `EdgeslimError` as a single line and exits 1; anything else is our bug (exit 2).
Messages name the file, key or line at fault and, where there is a closed set, the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgeslimError(Exception):
    """A problem with the user's input (file, recipe, budget, data), not with edgeslim itself."""


def choices(valid: Iterable[str]) -> str:
    """Format valid choices for an error message, sorted and comma separated."""
    return ", ".join(sorted(valid))
