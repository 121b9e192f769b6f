"""Building a job's config object (pydantic) from user options: a validation error becomes one
`EdgeslimError` line naming the option, as every user mistake does."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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


M = TypeVar("M", bound=BaseModel)


def with_fields(cls: type[M], what: str, options: M | None, fields: dict[str, Any]) -> M:
    """`options` (default `cls()`) with `fields` (field names of `cls`) laid on top, validated as `build_config`
    does: how `api.run(..., quiet=True)` and `api.export(..., int8=True)` take an options object's fields as
    keywords."""
    if not fields:
        return options or cls()
    base = dict(options) if options is not None else {}
    return build_config(cls, what, **{**base, **fields})


def short_repr(obj: BaseModel) -> str:
    """`Name(field=value, ...)` with only the fields that differ from their defaults."""
    show = {k: v for k, v in obj if v != type(obj).model_fields[k].default}
    return f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in show.items())})"
