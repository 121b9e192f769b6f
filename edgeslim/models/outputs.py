"""A model's outputs, however it returns them: one tensor, a tuple or list, or a dict (names kept)."""

from __future__ import annotations

from typing import Any

import torch


def output_list(out: Any) -> list[torch.Tensor]:
    """A model's outputs as a list: a tuple or list as it is, a dict's values in order, one tensor alone."""
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def output_names(out: Any) -> list[str] | None:
    """The names of several outputs (a dict's keys; `output_0`, `output_1`, ... for a tuple or list), None for one
    tensor: the names `deploy.export.export_onnx` gives them."""
    if isinstance(out, dict):
        return [str(k) for k in out]
    return [f"output_{k}" for k in range(len(out))] if isinstance(out, (tuple, list)) else None
