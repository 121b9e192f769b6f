"""Unstructured magnitude pruning (global or per layer) with masks that survive fine-tuning, plus what
every pruning pass shares: sparsity schedules, a real compressed sparse encoding and an interleaved
before/after latency comparison in ONNX Runtime.

Zeroed weights only shrink a model on disk when stored compressed, and only speed it up on sparse
kernels. So every stage reports both sizes: `size_bytes` (the dense ONNX as stored) and
`size_bytes_compressed` (the same model in the bitmask + non-zero-values encoding below, zip-deflated:
the byte count of a file `write_sparse` really writes).
"""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.fsutil import write_bytes
from edgeslim.measure.stage import STAGE_METRICS
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register, register_hook
from edgeslim.train import Hooks, TrainConfig

Schedule = Literal["oneshot", "linear", "cubic"]


class MagnitudePrune(PassConfig):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of prunable weights set to zero")
    # global: one magnitude threshold for all layers; layer: the same sparsity in every layer; lamp: one
    # threshold on LAMP scores (Lee et al. 2021), global ranking that does not empty a whole layer
    scope: Literal["global", "layer", "lamp"] = "global"
    schedule: Schedule = "oneshot"  # oneshot: one round; linear/cubic (Zhu & Gupta 2017) over `rounds`
    rounds: int = Field(1, ge=1, le=50, description="prune + fine-tune rounds for linear/cubic schedules")
    finetune: TrainConfig | None = None  # per round; default: the recipe's finetune block


def schedule_ratios(final: float, rounds: int, kind: str) -> list[float]:
    """Target ratio after each round. cubic: s_t = s_f (1 - (1 - t/n)^3) (Zhu & Gupta 2017, s_i = 0):
    prunes fast while redundancy is high, slowly near the end."""
    if kind == "oneshot" or rounds <= 1:
        return [final]
    ts = [t / rounds for t in range(1, rounds + 1)]
    if kind == "linear":
        return [final * t for t in ts]
    return [final * (1 - (1 - t) ** 3) for t in ts]


def prunable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weights of Conv and Linear layers (biases and norms are tiny and sensitive)."""
    return [
        (n, m.weight)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight is not None
    ]


def _threshold(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(sparsity * values.numel())
    return values.kthvalue(k).values if k > 0 else values.min() - 1


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP score of each weight: w_u^2 / sum of w_v^2 over the layer's weights at least as large. The
    largest weight of every layer scores 1, so a global threshold below 1 never removes a whole layer."""
    sq = w.flatten() ** 2
    order = sq.argsort()
    sorted_sq = sq[order]
    tail = sorted_sq.flip(0).cumsum(0).flip(0)  # sum over this and all larger weights
    out = torch.empty_like(sq)
    out[order] = sorted_sq / tail.clamp_min(1e-30)
    return out.reshape(w.shape)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module, sparsity: float, scope: str, per_layer: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks. `per_layer` (layer name -> sparsity) overrides `sparsity` in layer scope."""
    layers = prunable(model)
    if scope == "lamp":
        scores = {n: lamp_scores(w.detach()) for n, w in layers}
        thr = _threshold(torch.cat([v.flatten() for v in scores.values()]), sparsity)
        return {n: scores[n] > thr for n, _ in layers}
    if scope == "global":
        thr = _threshold(torch.cat([w.detach().abs().flatten() for _, w in layers]), sparsity)
        return {n: (w.abs() > thr) for n, w in layers}
    masks = {}
    for n, w in layers:
        s = (per_layer or {}).get(n, sparsity)
        masks[n] = w.abs() > _threshold(w.abs().flatten(), s) if s > 0 else torch.ones_like(w, dtype=torch.bool)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for n, w in prunable(model):
        if n in masks:
            w.mul_(masks[n].to(w.dtype))


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of Conv/Linear weights that are exactly zero."""
    ws = [w.detach() for _, w in prunable(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / max(1, sum(w.numel() for w in ws)))


@register_hook("keep_sparsity")
def keep_sparsity(model: nn.Module, ctx: RunContext, _: object) -> Hooks:
    """Fine-tuning keeps every weight that is zero now at zero (masks fixed during fine-tuning)."""
    masks = {n: (w.detach() != 0) for n, w in prunable(model)}
    return Hooks(after_step=[lambda m: apply_masks(m, masks)])


@register("magnitude_prune", MagnitudePrune)
def magnitude_prune(model: nn.Module | None, task: Task, cfg: MagnitudePrune, ctx: RunContext) -> PassResult:
    """Zero the smallest-magnitude weights to a target sparsity (one-shot or scheduled rounds), fine-tuning
    with masks fixed after each round."""
    assert model is not None
    before = copy.deepcopy(model).eval()
    ctx.carry["keep_sparsity"] = True
    rounds = []
    for i, s in enumerate(schedule_ratios(cfg.sparsity, cfg.rounds, cfg.schedule)):
        apply_masks(model, magnitude_masks(model, s, cfg.scope))
        hist = ctx.finetune_model(model, task, cfg.finetune, desc=f"magnitude_prune r{i + 1}")
        rounds.append({"target_sparsity": round(s, 4), "sparsity": round(weight_sparsity(model), 4),
                       "val_accuracy": hist["val_accuracy"]})
    notes = {"val_accuracy": rounds[-1]["val_accuracy"], "weight_sparsity": rounds[-1]["sparsity"],
             "rounds": rounds}
    notes.update(write_sparse_for_stage(model, task, ctx))
    notes.update(before_after(before, model.eval(), task))  # dense kernels: expect a speedup near 1x
    return PassResult(model, notes=notes, carry={"keep_sparsity": True})


# --- sparse storage: bitmask + non-zero values, zip-deflated --------------------------------------------


def encode_sparse(onnx_path: Path) -> bytes:
    """Encode an ONNX model as: the graph without weight data, and per initializer a packed bitmask of
    its non-zero positions plus the non-zero values in their own dtype; all in one deflated .npz."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    names = [t.name for t in m.graph.initializer]
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(t)
        nz = a != 0
        arrays[f"{i}.shape"] = np.asarray(a.shape, np.int64)
        arrays[f"{i}.mask"] = np.packbits(nz.ravel())
        arrays[f"{i}.values"] = a[nz]
    del m.graph.initializer[:]
    arrays["graph"] = np.frombuffer(m.SerializeToString(), np.uint8)
    arrays["names"] = np.asarray(names, dtype=np.str_)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_sparse(data: bytes):  # -> onnx.ModelProto
    """Inverse of `encode_sparse`: rebuild the ONNX model (bit-exact weights)."""
    import onnx
    from onnx import numpy_helper

    z = np.load(io.BytesIO(data), allow_pickle=False)
    m = onnx.ModelProto()
    m.ParseFromString(z["graph"].tobytes())
    for i, name in enumerate(z["names"]):
        shape = tuple(int(d) for d in z[f"{i}.shape"])
        n = int(np.prod(shape))
        mask = np.unpackbits(z[f"{i}.mask"], count=n).astype(bool)
        vals = z[f"{i}.values"]
        a = np.zeros(n, vals.dtype)
        a[mask] = vals
        m.graph.initializer.append(numpy_helper.from_array(a.reshape(shape), str(name)))
    return m


def write_sparse(onnx_path: Path, dst: Path) -> int:
    """Write the compressed sparse encoding of `onnx_path` to `dst`; returns its size in bytes."""
    data = encode_sparse(onnx_path)
    write_bytes(dst, data)
    return len(data)


def compressed_size_metric(onnx_path: Path, task: Task, metrics: dict) -> dict:
    """Stage metric: bytes of the sparse encoding of this stage's ONNX (the dense ONNX stays `size_bytes`)."""
    if onnx_path.stat().st_size > 256 * 2**20:  # keep measurement quick on very large third-party models
        return {"size_bytes_compressed": None}
    try:
        return {"size_bytes_compressed": len(encode_sparse(onnx_path))}
    except Exception:  # an ONNX with external data or odd dtypes: report nothing rather than guess
        return {"size_bytes_compressed": None}


STAGE_METRICS.append(compressed_size_metric)


def write_sparse_for_stage(model: nn.Module, task: Task, ctx: RunContext) -> dict:
    """Export the pruned model and store its compressed encoding in the stage folder (`model.sparse.npz`)."""
    from edgeslim.deploy.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "model.onnx"
        export_onnx(model, task.input_shape, p)
        n = write_sparse(p, ctx.stage_dir / "model.sparse.npz")
        return {"sparse_file": "model.sparse.npz", "sparse_file_bytes": n, "dense_onnx_bytes": p.stat().st_size}


# --- before/after latency, interleaved in one process ----------------------------------------------------


def before_after(before: nn.Module, after: nn.Module, task: Task, batches: tuple[int, ...] = (1,)) -> dict:
    """Parameters, MACs (per sample) and ORT latency (ms, interleaved) before and after a pass."""
    from edgeslim.deploy.export import export_onnx
    from edgeslim.measure.latency import interleaved_p50_ms
    from edgeslim.measure.macs import count_macs, count_params

    out: dict = {
        "params_before": count_params(before)[0], "params_after": count_params(after)[0],
        "macs_before": count_macs(before, task.input_shape), "macs_after": count_macs(after, task.input_shape),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "before.onnx", Path(tmp) / "after.onnx"]
        export_onnx(before, task.input_shape, paths[0])
        export_onnx(after, task.input_shape, paths[1])
        for b in batches:
            x = task.x_test[np.arange(b) % len(task.x_test)].astype(np.float32)
            lat = interleaved_p50_ms({"before": paths[0], "after": paths[1]}, x, rounds=5,
                                     per_round=20 if b == 1 else 5, warmup=5)
            t_b, t_a = lat["before"], lat["after"]
            out[f"latency_ms_before_b{b}"] = round(t_b, 4)
            out[f"latency_ms_after_b{b}"] = round(t_a, 4)
            out[f"speedup_b{b}"] = round(t_b / t_a, 3)
    return out
