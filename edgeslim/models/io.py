"""Model folders: `model.safetensors` + `spec.json`. Never unpickle unless the user says so."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import json_text, write_many
from edgeslim.models.spec import build_model, resize_to_state_dict

WEIGHTS = "model.safetensors"
SPEC = "spec.json"


def save_model(folder: Path, model: nn.Module, spec: dict, extra: dict | None = None) -> None:
    """Write weights and spec atomically. `extra` (e.g. training metrics) goes into `spec.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    from safetensors.torch import save

    spec_text = json_text({**spec, **({"extra": extra} if extra else {})})
    write_many({folder / WEIGHTS: save(state), folder / SPEC: spec_text.encode()})  # weights and spec as one step


def onnx_stage(path: Path) -> tuple[Path, list[str]] | None:
    """(`model.onnx`, its `--shape` default) of a stage folder whose model is ONNX only: a stage of a run on an ONNX
    file (spec `"arch": "onnx"`: its PyTorch side is the converted source plus these weights, which only the run
    reopens) or an ONNX-only stage of any run (no spec.json: e.g. `quantize_int8`); else None. Commands that take
    a model folder measure and export that file, the stage as the run exported and checked it; the shape default
    (`NAME=1,D1,...` from the spec's input name and sample shape, [] where there is none) stands in for the
    symbolic dims the file may keep from its source."""
    path = Path(path)
    if not (path.is_dir() and (path / "model.onnx").is_file()):
        return None
    if not (path / SPEC).exists():
        return path / "model.onnx", []
    try:
        spec = json.loads((path / SPEC).read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(spec, dict) or spec.get("arch") != "onnx":
        return None
    name, shape = spec.get("input_name"), spec.get("input_shape") or []
    known = name and shape and all(isinstance(d, int) for d in shape)
    shapes = [f"{name}=1,{','.join(str(d) for d in shape)}"] if known else []
    return path / "model.onnx", shapes


def load_model(path: Path, trust_pickle: bool = False, model_class: str | None = None) -> tuple[nn.Module, dict]:
    """Load a model: an edgeslim folder (safetensors + spec.json, or a stage stored as a `.pt2` program), a
    `torch.export` program (`.pt2`), a state dict (`.safetensors`, or `.pt`/`.pth` read without pickle code)
    with `model_class` (`module:Class`), or a `.pt` full pickle when `trust_pickle`. Returns (model in eval
    mode, spec); a PyTorch program's spec has `"arch": "program"`."""
    from edgeslim.models import program

    path = Path(path)
    if path.suffix == ".pt2" and path.is_file():
        net = program.load_program(path)
        return net, _program_spec(path, getattr(net, "input_shape", None))
    if path.suffix == ".safetensors" and path.is_file() or (path.suffix in (".pt", ".pth") and path.is_file()
                                                            and model_class is not None):
        return program.load_state_dict_model(path, model_class), _program_spec(path, None, model_class)
    if path.suffix in (".pt", ".pth") and path.is_file():
        return _load_pickle(path, trust_pickle)
    if path.is_dir() and (path / program.PROGRAM).is_file() and (path / SPEC).is_file():
        return program.reopen_program(path)
    if not path.is_dir():
        raise EdgeslimError(f"{path}: not a model folder (expected {WEIGHTS} and {SPEC} inside)")
    for f in (WEIGHTS, SPEC):
        if not (path / f).exists():
            raise EdgeslimError(f"{path}: missing {f}; is this an edgeslim model folder?")
    try:
        spec = json.loads((path / SPEC).read_text())
    except json.JSONDecodeError as e:
        raise EdgeslimError(f"{path / SPEC}: invalid JSON ({e})") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise EdgeslimError(f"{path / WEIGHTS}: unreadable safetensors file ({e})") from None
    model = build_model(spec)
    resize_to_state_dict(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise EdgeslimError(f"{path / WEIGHTS}: weights do not match {SPEC}: {' '.join(first[:3])}") from None
    return model.eval(), spec


def _program_spec(path: Path, input_shape: list[int] | None, model_class: str | None = None) -> dict:
    spec: dict = {"format": 1, "arch": "program", "source": str(path), "edits": []}
    if input_shape is not None:
        spec["input_shape"] = list(input_shape)
    if model_class is not None:
        spec["class"] = model_class
    return spec


def _load_pickle(path: Path, trust_pickle: bool) -> tuple[nn.Module, dict]:
    if not trust_pickle:
        raise EdgeslimError(
            f"{path}: a .pt pickle can run arbitrary code when loaded, so it is not loaded; if you trust it, "
            "pass --trust-pickle (edgeslim run, export); a state dict needs --model-class module:Class instead, "
            "or save the model with torch.export.save (.pt2)"
        )
    import sys

    extra = [p for p in (str(Path.cwd()), str(path.resolve().parent)) if p not in sys.path]
    sys.path[:0] = extra  # the pickle's classes are the user's: importable from where they work and the file
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise EdgeslimError(f"{path}: the pickle needs code that cannot be imported here ({e}); run from the "
                            "folder holding that module, or save the model with torch.export.save (.pt2)") from None
    finally:
        for p in extra:
            sys.path.remove(p)
    if isinstance(obj, dict):
        raise EdgeslimError(f"{path}: a state dict, not a model; pass --model-class module:Class (the class that "
                            "builds it) instead of --trust-pickle")
    if not isinstance(obj, nn.Module):
        raise EdgeslimError(f"{path}: expected a pickled nn.Module, got {type(obj).__name__}")
    spec = {"format": 1, "arch": "program", "source": str(path), "edits": [], "pickle": True}
    return obj.eval(), spec


__all__ = ["save_model", "load_model", "save_file"]
