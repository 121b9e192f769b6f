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


def load_model(path: Path, trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """Load a model folder (or a `.pt` full pickle when `trust_pickle`). Returns (model in eval mode, spec)."""
    path = Path(path)
    if path.suffix in (".pt", ".pth") and path.is_file():
        return _load_pickle(path, trust_pickle)
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


def _load_pickle(path: Path, trust_pickle: bool) -> tuple[nn.Module, dict]:
    if not trust_pickle:
        raise EdgeslimError(
            f"{path}: a .pt pickle can run arbitrary code when loaded, so it is not loaded; if you trust it, "
            "pass --trust-pickle (edgeslim run, export), or save the model as an edgeslim folder (safetensors)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise EdgeslimError(f"{path}: expected a pickled nn.Module, got {type(obj).__name__}")
    spec = {"format": 1, "arch": "pickle", "source": str(path), "edits": []}
    return obj.eval(), spec


__all__ = ["save_model", "load_model", "save_file"]
