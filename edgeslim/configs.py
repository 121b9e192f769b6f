"""Building a job's config object (pydantic) from user options: a validation error becomes one
`EdgeslimError` line naming the option, as every user mistake does."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from edgeslim.errors import EdgeslimError

T = TypeVar("T")


def build_config(cls: type[T], what: str, **fields: Any) -> T:
    """`cls(**fields)`; a bad value raises `EdgeslimError("<what>: --<option>: <why> (got <value>)")`."""
    try:
        return cls(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        opt = "--" + ".".join(str(x) for x in err["loc"]).replace("_", "-") if err["loc"] else "options"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        raise EdgeslimError(f"{what}: {opt}: {err['msg']}{got}") from None
