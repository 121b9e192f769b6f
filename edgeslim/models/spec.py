"""Architecture specs: the JSON that, with a safetensors file, rebuilds a model without pickle.

A spec names a zoo architecture and its arguments, plus an ordered list of *edits*: structural changes
that passes made (a Linear replaced by two low-rank factors, a block removed). Channel counts changed
by structured pruning need no edit: `resize_to_state_dict` resizes layers to the stored tensor shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeslim.errors import EdgeslimError, choices
from edgeslim.models.zoo import ZOO

SPEC_FORMAT = 1
EditFn = Callable[..., None]
EDITS: dict[str, EditFn] = {}


def register_edit(name: str) -> Callable[[EditFn], EditFn]:
    """Register a replayable structural edit `fn(model, **args)` under `name`."""

    def deco(fn: EditFn) -> EditFn:
        EDITS[name] = fn
        return fn

    return deco


def make_spec(arch: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> dict:
    if arch not in ZOO:
        raise EdgeslimError(f"unknown model '{arch}'; valid: {choices(ZOO)}")
    return {
        "format": SPEC_FORMAT,
        "arch": arch,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "kwargs": kwargs,
        "edits": [],
    }


def build_model(spec: dict) -> nn.Module:
    """Build the architecture a spec describes (random weights), replaying its edits."""
    try:
        entry = ZOO[spec["arch"]]
        model = entry.build(tuple(spec["input_shape"]), spec["num_classes"], **spec.get("kwargs", {}))
    except KeyError as e:
        raise EdgeslimError(f"architecture spec: unknown or missing {e}; valid models: {choices(ZOO)}") from None
    except TypeError as e:
        raise EdgeslimError(f"architecture spec: bad arguments for '{spec['arch']}': {e}") from None
    for edit in spec.get("edits", []):
        apply_edit(model, edit)
    return model


def apply_edit(model: nn.Module, edit: dict) -> None:
    args = dict(edit)
    name = args.pop("edit", None)
    if name not in EDITS:
        raise EdgeslimError(f"architecture spec: unknown edit '{name}'; valid: {choices(EDITS)}")
    EDITS[name](model, **args)


def add_edit(spec: dict, name: str, **args: Any) -> dict:
    """Return a copy of `spec` with one more edit recorded."""
    out = copy.deepcopy(spec)
    out.setdefault("edits", []).append({"edit": name, **args})
    return out


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(model, parent_path), name, new)


@register_edit("identity")
def _identity(model: nn.Module, module: str) -> None:
    """Replace a module by nn.Identity (e.g. a residual block removed by depth pruning)."""
    set_module(model, module, nn.Identity())


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize Conv/Linear/BatchNorm layers, and the input size of LSTM/GRU/RNN layers, to the shapes in `state`
    (structured pruning changes them)."""
    for path, m in list(model.named_modules()):
        if isinstance(m, nn.LSTM | nn.GRU | nn.RNN):  # channel pruning changed the input size (its input columns)
            ih, hh = state.get(f"{path}.weight_ih_l0"), state.get(f"{path}.weight_hh_l0")
            if ih is not None and hh is not None and (int(ih.shape[1]), int(hh.shape[1])) != (m.input_size, m.hidden_size):
                kw = {"proj_size": m.proj_size} if isinstance(m, nn.LSTM) else {}
                if isinstance(m, nn.RNN):
                    kw["nonlinearity"] = m.nonlinearity
                set_module(model, path, type(m)(int(ih.shape[1]), int(hh.shape[1]), m.num_layers, bias=m.bias,
                                                batch_first=m.batch_first, dropout=m.dropout,
                                                bidirectional=m.bidirectional, **kw))
            continue
        w = state.get(f"{path}.weight" if path else "weight")
        if w is None:
            continue
        if isinstance(m, nn.modules.conv._ConvTransposeNd) and tuple(w.shape) != tuple(m.weight.shape):
            in_c, out_c = int(w.shape[0]), int(w.shape[1]) * m.groups  # transposed: weight [in, out / groups, ...]
            set_module(model, path, type(m)(  # type: ignore[call-arg]
                in_c, out_c, m.kernel_size, stride=m.stride, padding=m.padding, output_padding=m.output_padding,
                groups=m.groups, bias=m.bias is not None, dilation=m.dilation))
        elif isinstance(m, nn.modules.conv._ConvNd) and tuple(w.shape) != tuple(m.weight.shape):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            out_c = int(w.shape[0])
            groups = out_c if depthwise else m.groups
            in_c = out_c if depthwise else int(w.shape[1]) * groups
            new = type(m)(  # type: ignore[call-arg]
                in_c, out_c, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode,
            )
            set_module(model, path, new)
        elif isinstance(m, nn.Linear) and tuple(w.shape) != tuple(m.weight.shape):
            set_module(model, path, nn.Linear(int(w.shape[1]), int(w.shape[0]), m.bias is not None))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and w.shape[0] != m.num_features:
            set_module(model, path, type(m)(int(w.shape[0]), m.eps, m.momentum, m.affine, m.track_running_stats))
