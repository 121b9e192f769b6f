"""The ONNX-side work of the text-encoder passes (`edgeslim/passes/encoder_fuse.py`, `encoder_int8_*.py`):
transformer fusion and INT8 with sensitive layers kept float. Each takes the previous stage's ONNX and a
folder to write into and returns (new ONNX path, notes). Pure transforms: nothing here times a model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.nlp import export as ex
from edgeslim.nlp import quant as q
from edgeslim.nlp.encoder import SentenceEncoder, tokenize
from edgeslim.onnxkit.quant import QUANTIZED_OPS as _ONNX_QUANTIZED

QUANTIZED_OPS = _ONNX_QUANTIZED | {"QAttention", "QEmbedLayerNormalization", "DynamicQuantizeMatMul"}


def _float_source(src: Path, name: str) -> Path:
    ops = set(ex.op_counts_file(src))
    if ops & QUANTIZED_OPS:
        raise EdgeslimError(f"{name}: the previous stage is already quantized ({', '.join(sorted(ops & QUANTIZED_OPS))});"
                            " use one INT8 pass per recipe, after the structural passes")
    return src


def fuse(model: SentenceEncoder, task: Any, prev: Path, stage_dir: Path) -> tuple[Path, dict]:
    """Fuse; keep the fused graph only if its embeddings match the unfused one's (max |diff| <= 1e-4)."""
    src = _float_source(prev, "encoder_fuse")
    dst = stage_dir / "model.onnx"
    stats = ex.fuse_transformer(src, dst)
    texts = task.test[:32]
    diff = float(np.abs(ex.onnx_embed(dst, model, texts) - ex.onnx_embed(src, model, texts)).max())
    notes: dict = {"fused": stats, "max_abs_diff_to_unfused": diff}
    if not diff <= 1e-4:  # unit-length embeddings: a fusion that moves them is a wrong fusion
        shutil.copyfile(src, dst)
        notes["note"] = f"the fused graph changed the embeddings (max |diff| {diff:.3g}); kept the unfused graph"
    elif not any(k in stats for k in ("Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization")):
        notes["note"] = "no fusion pattern matched this graph; it is unchanged"
    return dst, notes


def int8(model: SentenceEncoder, task: Any, cfg: Any, prev: Path, stage_dir: Path,
         static: bool) -> tuple[Path, dict]:
    """`cfg`: the pass config (per_channel, keep_float, keep_float_nodes, sensitivity_samples, and embeddings
    for dynamic or method / calibration_samples for static)."""
    name = "encoder_int8_static" if static else "encoder_int8_dynamic"
    src = _float_source(prev, name)
    work = stage_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    named = work / "named.onnx"
    q.name_nodes_file(src, named)
    nodes = q.node_linears(named, model)
    all_nodes = set(_node_names(named))
    bad = [n for n in cfg.keep_float_nodes if n not in all_nodes]
    if bad:
        raise EdgeslimError(f"{name}.keep_float_nodes: no node named '{bad[0]}'; quantizable nodes: "
                            f"{', '.join(sorted(nodes)[:6])}{', ...' if len(nodes) > 6 else ''}")
    sens: dict[str, float] = {}
    picked: list[tuple[str, float]] = []
    if cfg.keep_float:
        sens = q.linear_sensitivity(model, task.train[: cfg.sensitivity_samples], cfg.per_channel)
        picked = q.pick_float_nodes(sens, nodes, cfg.keep_float)
    exclude = sorted({n for n, _ in picked} | set(cfg.keep_float_nodes))
    dst = stage_dir / "model.onnx"
    with ex.quiet_logs():  # ORT's quantizer logs advice on every call
        if static:
            feeds = [tokenize(model, [t]) for t in task.train[: cfg.calibration_samples]]
            q.quantize_encoder_static(named, dst, feeds, exclude, cfg.per_channel, cfg.method)
            fmt = f"static INT8 QDQ (u8 activations, calibrated {cfg.method} on {len(feeds)} sentences; s8 weights)"
        else:
            q.quantize_encoder_dynamic(named, dst, exclude, cfg.per_channel, cfg.embeddings)
            fmt = "dynamic INT8 (u8 activations scaled at run time, s8 weights; MatMulInteger/QAttention)"
    shutil.rmtree(work)
    q.drop_value_info(dst)
    dup = q.duplicated_float_weights(dst)
    if dup:  # our bug, not the user's: a quantized weight must not also be stored in float
        raise AssertionError(f"{dst}: float copies kept beside int8 weights: {dup[:3]}")
    store = ex.weight_storage(dst)
    ops = ex.op_counts_file(dst)
    return dst, {
        "format": fmt + (", per channel" if cfg.per_channel else ", per tensor"),
        "quantized_layers": sum(1 for n in nodes if n not in exclude),
        "embeddings_int8": bool(getattr(cfg, "embeddings", False)) and not static,
        "ops": {k: v for k, v in ops.items() if k in QUANTIZED_OPS},
        "kept_float": [{"node": n, "cosine_loss_alone": round(s, 6)} for n, s in picked]
                      + [{"node": n, "cosine_loss_alone": None} for n in cfg.keep_float_nodes],
        "sensitivity": {k: v for k, v in sorted(sens.items(), key=lambda kv: -kv[1])},
        "weight_bytes": store["bytes_by_dtype"],
        "float_copies_of_int8_weights": len(dup),
        "size_vs_previous": round(dst.stat().st_size / src.stat().st_size, 4),
    }


def _node_names(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node]
