"""Your own PyTorch model, without a pickle: a `torch.export` program (`.pt2`), or a state dict with the class
that builds it (`module:Class`). Stages of such a run are stored as `.pt2` programs: they reopen (resume,
`export`) with no user code and no unpickling.

A program from `torch.export` calls ATen functions with its weights as attributes; structured pruning
(Torch-Pruning) needs layers. `lift_layers` turns every `conv1d/conv2d`, `linear` and `batch_norm` call whose
weights belong to one module into that layer (`nn.Conv2d`, ...), so the graph prunes like the source model.
Save one with (batch dimension dynamic, so it trains and measures at any batch size):
```python
batch = torch.export.Dim("batch")
program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
torch.export.save(program, "model.pt2")
```
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import json_text, write_many

PROGRAM = "model.pt2"
SPEC = "spec.json"
_aten = torch.ops.aten


class LiftedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm lifted from a program: any input rank (the program knew it; the layer need not)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


def load_program(path: Path) -> nn.Module:
    """A `.pt2` file (`torch.export.save`) as a trainable module with real layers (`lift_layers`); its
    per-sample input shape, when the program fixes it, is the module's `input_shape` attribute."""
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a file that is not a program
        raise EdgeslimError(f"{path}: not a torch.export program ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); save one with "
                            "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')") from None
    inputs = list(ep.graph_signature.user_inputs)
    if len(inputs) != 1:
        raise EdgeslimError(f"{path}: the program takes {len(inputs)} inputs ({', '.join(inputs)}); a PyTorch program "
                            "takes one input for now. Export the model to ONNX (torch.onnx.export) and run the .onnx "
                            "file: it takes several inputs (--inputs X.npz, one array per input)")
    gm = lift_layers(ep.module()).eval()
    gm.input_shape = _input_shape(ep)
    return gm


def _input_shape(ep: Any) -> list[int] | None:
    """The per-sample shape of a one-input program (batch dimension left out), if every other dimension is fixed."""
    users = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    if len(users) != 1 or not hasattr(users[0].meta.get("val"), "shape"):
        return None
    dims = list(users[0].meta["val"].shape)[1:]
    return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None


def _attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _owner(gm: nn.Module, nodes: list[Any], allowed: set[str]) -> str | None:
    """The module path all `nodes` (get_attr) live in, when that module holds nothing else (only `allowed`)."""
    if not nodes or any(n is None or getattr(n, "op", None) != "get_attr" for n in nodes):
        return None
    paths = {n.target.rpartition(".")[0] for n in nodes}
    if len(paths) != 1 or "" in paths:
        return None
    path = paths.pop()
    holder = _attr(gm, path)
    own = {k for k, _ in holder.named_parameters(recurse=False)} | {k for k, _ in holder.named_buffers(recurse=False)}
    if type(holder) is not nn.Module or any(True for _ in holder.children()) or not own <= allowed:
        return None
    if any(len(n.users) != 1 for n in nodes):  # a weight also used elsewhere stays functional
        return None
    return path


def _set(gm: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_attr(gm, parent) if parent else gm, leaf, new)


def lift_layers(gm: Any) -> Any:
    """Replace ATen conv/linear/batch-norm calls of a `torch.export` module by layers; returns a plain
    `GraphModule` (the exported one refuses `train()`/`eval()`)."""
    gm = torch.fx.GraphModule(gm, gm.graph, class_name="Program")
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":  # input-shape guards of the export
            g.erase_node(node)
            if hasattr(gm, "_guards_fn"):
                delattr(gm, "_guards_fn")
            continue
        if node.op != "call_function":
            continue
        t, args = node.target, list(node.args)
        layer: nn.Module | None = None
        if t in (_aten.conv1d.default, _aten.conv2d.default) and not node.kwargs:
            x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
            path = _owner(gm, [w] + ([b] if b is not None else []), {"weight", "bias"})
            if path is None:
                continue
            dims = 1 if t == _aten.conv1d.default else 2
            stride, padding, dilation, groups = (args[3:] + [1, 0, 1, 1][len(args[3:]):])[:4]
            if isinstance(padding, str):
                continue
            weight = _attr(gm, w.target)
            cls = nn.Conv1d if dims == 1 else nn.Conv2d
            layer = cls(int(weight.shape[1]) * int(groups), int(weight.shape[0]), tuple(weight.shape[2:]),
                        stride=stride, padding=padding, dilation=dilation, groups=int(groups), bias=b is not None)
            layer.weight = weight
            if b is not None:
                layer.bias = _attr(gm, b.target)
            used = [w] + ([b] if b is not None else [])
        elif t == _aten.linear.default and not node.kwargs:
            x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
            path = _owner(gm, [w] + ([b] if b is not None else []), {"weight", "bias"})
            if path is None:
                continue
            weight = _attr(gm, w.target)
            layer = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=b is not None)
            layer.weight = weight
            if b is not None:
                layer.bias = _attr(gm, b.target)
            used = [w] + ([b] if b is not None else [])
        elif t == _aten.batch_norm.default and not node.kwargs and len(args) >= 8:
            x, w, b, rm, rv, _training, momentum, eps = args[:8]
            if w is None or b is None or rm is None or rv is None:
                continue
            path = _owner(gm, [w, b, rm, rv], {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
            if path is None:
                continue
            weight = _attr(gm, w.target)
            layer = LiftedBatchNorm(int(weight.shape[0]), eps=float(eps), momentum=float(momentum))
            layer.weight, layer.bias = weight, _attr(gm, b.target)
            layer.register_buffer("running_mean", _attr(gm, rm.target).clone())
            layer.register_buffer("running_var", _attr(gm, rv.target).clone())
            used = [w, b, rm, rv]
        else:
            continue
        _set(gm, path, layer)
        with g.inserting_before(node):
            new = g.call_module(path, (x,))
        node.replace_all_uses_with(new)
        g.erase_node(node)
        for a in used:
            if not a.users:
                g.erase_node(a)
    for node in list(g.nodes):  # attributes nothing reads any more (num_batches_tracked)
        if node.op == "get_attr" and not node.users:
            g.erase_node(node)
    g.lint()
    gm.recompile()
    return gm


def check_batch(model: nn.Module, input_shape: tuple[int, ...], where: Path) -> None:
    """A model must run at batch 2 (training, measurement); a program exported at a fixed batch does not."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape))
    except Exception as e:
        raise EdgeslimError(
            f"{where}: the model does not run on a batch of 2 inputs of shape {tuple(input_shape)} "
            f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); export it with a dynamic batch: "
            "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))") from None


def save_program(folder: Path, model: nn.Module, spec: dict) -> None:
    """The model as a `.pt2` program (batch dimension dynamic) plus `spec.json`, written as one step."""
    data = program_bytes(model, torch.zeros(2, *tuple(spec["input_shape"])), folder.name,
                         "the model cannot be stored as a torch.export program, so its stages would not reopen")
    folder.mkdir(parents=True, exist_ok=True)
    write_many({folder / PROGRAM: data, folder / SPEC: json_text(spec).encode()})


def program_bytes(model: nn.Module, example: torch.Tensor, where: str, why: str) -> bytes:
    """`model` captured by `torch.export` on `example` (a batch of at least 2: the batch dimension stays
    dynamic) as the bytes of a `.pt2` file; a model it cannot capture is one line, `where: why (...)`."""
    batch = torch.export.Dim("batch", min=1)
    try:
        ep = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as e:  # torch.export raises many types (data-dependent control flow, unsupported ops)
        raise EdgeslimError(f"{where}: {why} ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def reopen_program(folder: Path) -> tuple[nn.Module, dict]:
    spec = json.loads((folder / SPEC).read_text())
    return load_program(folder / PROGRAM), spec


def import_class(path: str, where: str = "--model-class") -> type[nn.Module]:
    """`module:Class` imported from the working directory (then sys.path); one line when it is not there."""
    mod_name, _, cls_name = path.partition(":")
    if not mod_name or not cls_name:
        raise EdgeslimError(f"{where}: expected module:Class (e.g. mynet:Net), got {path!r}")
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise EdgeslimError(f"{where}: cannot import module '{mod_name}' from {cwd} or the Python path "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    obj: Any = mod
    for part in cls_name.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise EdgeslimError(f"{where}: '{cls_name}' in module '{mod_name}' is not an nn.Module class")
    return obj


def load_state_dict_model(path: Path, class_path: str | None) -> nn.Module:
    """A state dict (.safetensors, or .pt/.pth read with weights_only=True: no code runs) into `Class()`."""
    from edgeslim.models.spec import resize_to_state_dict

    if class_path is None:
        raise EdgeslimError(f"{path}: a state dict holds weights only; name the class that builds the model "
                            "with --model-class module:Class (or save a torch.export program, .pt2)")
    cls = import_class(class_path)
    try:
        model = cls()
    except TypeError as e:
        raise EdgeslimError(f"--model-class {class_path}: the class must build with no arguments ({e})") from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EdgeslimError(f"{path}: not a state dict readable without pickle code ({type(e).__name__}); "
                                "only full pickles need --trust-pickle") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeslimError(f"{path}: expected a state dict (parameter name -> tensor)")
    resize_to_state_dict(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:2])
        raise EdgeslimError(f"{path}: weights do not fit {class_path}: {first[:200]}") from None
    return model.eval()
