"""Profile the baseline once: its per-layer table (for footprint predictions), its exported ONNX
measured like every candidate, and per-layer pruning sensitivity (for the guided starting points)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim import models
from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.models.probe import probe
from edgeslim.prune.sensitivity import sensitivity_curves
from edgeslim.search.objectives import arena_bytes, measure_candidate
from edgeslim.search.space import Baseline, BaselineLayer

LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[BaselineLayer], int]:
    """Conv/Linear layers in execution order with params, MACs and activation sizes for one sample;
    and the count of parameters outside them (norms)."""
    names = {m: n for n, m in model.named_modules()}
    rows: list[dict] = []

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        y = out.numel() // out.shape[0]
        if isinstance(m, nn.modules.conv._ConvNd):
            macs = y * int(np.prod(m.kernel_size)) * (int(m.in_channels) // int(m.groups))  # type: ignore[arg-type]
        else:
            macs = y * int(m.in_features)  # type: ignore[arg-type]
        rows.append({"name": names[m], "params": sum(p.numel() for p in m.parameters()), "macs": macs,
                     "out_elems": y, "in_elems": inp[0].numel() // inp[0].shape[0]})

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    probe(model, input_shape, hooks)
    seen: set[str] = set()
    layers = []
    for i, r in enumerate(rows):
        if r["name"] in seen:  # a layer called twice (weight sharing) counts once
            continue
        seen.add(r["name"])
        layers.append(BaselineLayer(last=(i == len(rows) - 1), **r))
    covered = sum(x.params for x in layers)
    return layers, sum(p.numel() for p in model.parameters()) - covered


def profile_baseline(model_dir: Path, task: Task, device: Any, work: Path) -> tuple[Baseline, dict, dict]:
    """(Baseline table, baseline metrics on val, baseline metrics on test). Writes `work/baseline.onnx`."""
    model, spec = models.load_model(model_dir)
    layers, other = layer_table(model, task.input_shape)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "baseline.onnx"
    with tempfile.TemporaryDirectory(dir=work) as tmp:  # workers sharing --out must not see half a file
        export_onnx(model, task.input_shape, Path(tmp) / "baseline.onnx")
        os.replace(Path(tmp) / "baseline.onnx", onnx_path)
    arena, method = arena_bytes(onnx_path)
    base = Baseline(tuple(layers), sum(p.numel() for p in model.parameters()), sum(x.macs for x in layers),
                    onnx_path.stat().st_size, arena, method, other)
    return base, measure_candidate(onnx_path, task, device, "val"), measure_candidate(onnx_path, task, device, "test")


def channel_sensitivity(model_dir: Path, task: Task, ratios: tuple[float, ...] = (0.1, 0.25, 0.4, 0.55, 0.7)) -> dict:
    """Per layer: validation accuracy drop (points) when that layer alone loses the given fraction of its
    output channels (lowest L2 norm, no fine-tuning; Torch-Pruning removes the channels and what depends
    on them: `prune.sensitivity`). Cheap: one evaluation per layer and ratio."""
    model, _ = models.load_model(model_dir)
    c = sensitivity_curves(model, task, list(ratios), mode="structured")
    return {row["layer"]: {r: round(100 * (c["baseline"] - row["accuracy"][f"{r:g}"]), 3) for r in ratios}
            for row in c["layers"]}
