"""INT8 for sentence encoders in ONNX Runtime: dynamic (weights int8, activations scaled at run time;
MatMulInteger / QAttention) and static (ranges calibrated on the calibration sentences; QDQ), with the
most sensitive layers kept float.

Sensitivity is measured in PyTorch, one Linear at a time: that layer's weights and input are rounded the
way ORT's dynamic INT8 rounds them (weights symmetric int8, per tensor or per output channel; inputs
asymmetric uint8 over the whole sentence), and 1 - mean cosine of the embeddings to the float model's
is the layer's score. Each ONNX node is matched to its Linear(s) by weight values (a fused Attention node
holds the query, key and value weights), so kept-float layers are named to the quantizer by node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.fsutil import write_bytes
from edgeslim.nlp.encoder import SentenceEncoder, embed
from edgeslim.nlp.fidelity import mean_cosine

QUANT_OPS = ("MatMul", "Attention")


def _fq_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().max()
    s = torch.clamp(amax, min=1e-12) / 127.0
    return torch.clamp(torch.round(w / s), -127, 127) * s


def _fq_input(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.dim()))
    lo = torch.clamp(x.amin(dim=dims, keepdim=True), max=0.0)
    hi = torch.clamp(x.amax(dim=dims, keepdim=True), min=0.0)
    s = torch.clamp(hi - lo, min=1e-12) / 255.0
    zp = torch.round(-lo / s)
    return (torch.clamp(torch.round(x / s) + zp, 0, 255) - zp) * s


@torch.no_grad()
def linear_sensitivity(enc: SentenceEncoder, texts: list[str], per_channel: bool) -> dict[str, float]:
    """{Linear module name: 1 - mean cosine of the embeddings with only that layer INT8-rounded}."""
    ref = embed(enc, texts)
    out: dict[str, float] = {}
    for name, mod in enc.backbone.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        wq = _fq_weight(mod.weight, per_channel)

        def hook(m: nn.Linear, args: tuple, _out: torch.Tensor, wq: torch.Tensor = wq) -> torch.Tensor:
            return F.linear(_fq_input(args[0]), wq, m.bias)

        h = mod.register_forward_hook(hook)
        try:
            out[name] = round(1.0 - mean_cosine(embed(enc, texts), ref), 8)
        finally:
            h.remove()
    return out


def node_linears(onnx_path: Path, enc: SentenceEncoder) -> dict[str, list[str]]:
    """{ONNX node name: Linear module names} for MatMul / Attention nodes with constant weights, matched
    by shape and values (the exported MatMul weight is the Linear's weight transposed)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in g.initializer}
    lins = {n: m.weight.detach().numpy().T for n, m in enc.backbone.named_modules() if isinstance(m, nn.Linear)}
    out: dict[str, list[str]] = {}
    for node in g.node:
        if node.op_type not in QUANT_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 2:
            continue
        if node.op_type == "MatMul":
            hits = [n for n, lw in lins.items() if lw.shape == w.shape and np.allclose(lw[:8, :8], w[:8, :8])]
        else:  # fused Attention: [query | key | value] along the output axis
            q = w.shape[1] // 3
            hits = [n for n, lw in lins.items() if lw.shape == (w.shape[0], q) and np.allclose(lw[:8, :8], w[:8, :8])]
            hits = [h.replace(".query", s) for h in hits[:1] for s in (".query", ".key", ".value")]
        if hits:
            out[node.name] = hits[:3]
    return out


def name_nodes_file(src: Path, dst: Path) -> None:
    """A copy of `src` with every node named (the quantizer excludes nodes by name)."""
    import onnx

    from edgeslim.onnxkit.graph import name_nodes as name_all

    m = onnx.load(str(src))
    name_all(m)
    write_bytes(dst, m.SerializeToString())


def pick_float_nodes(sens: dict[str, float], nodes: dict[str, list[str]], k: int) -> list[tuple[str, float]]:
    """The `k` nodes whose Linears lose the most embedding cosine when rounded (summed per node)."""
    per_node = {n: sum(sens.get(x, 0.0) for x in mods) for n, mods in nodes.items()}
    return sorted(per_node.items(), key=lambda kv: -kv[1])[:k]


def quantize_encoder_dynamic(src: Path, dst: Path, exclude: list[str], per_channel: bool, embeddings: bool) -> None:
    """Dynamic INT8 (QOperator: MatMulInteger, QAttention; u8 activations, s8 weights, full range: VNNI
    CPUs do not need reduce_range, and the fidelity figures show what it costs where they do)."""
    import onnx

    from edgeslim.onnxkit import quant as oq

    ops = list(QUANT_OPS) + (["Gather", "EmbedLayerNormalization"] if embeddings else [])
    oq.quantize_dynamic_file(src, dst, per_channel=per_channel, reduce_range=False, op_types=ops, exclude_nodes=exclude,
                        extra={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_encoder_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], exclude: list[str],
                    per_channel: bool, method: str) -> None:
    """Static INT8 QDQ (u8 activations with calibrated ranges, s8 weights) of the MatMul layers."""
    import onnx

    from edgeslim.onnxkit import quant as oq

    oq.quantize_static(src, dst, feeds, oq.IntFormat("uint8", False, per_channel), oq.StaticQuant(
        method=method, op_types=["MatMul"], exclude_nodes=exclude,
        extra={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True}))


def duplicated_float_weights(path: Path) -> list[str]:
    """Float initializers that still sit beside their quantized copy ('<w>' next to '<w>_quantized'):
    the mistake that returns an INT8 file to full size. Should be empty."""
    import onnx

    g = onnx.load(str(path)).graph
    names = {t.name: t.data_type for t in g.initializer}
    return [n[: -len("_quantized")] for n in names
            if n.endswith("_quantized") and names.get(n[: -len("_quantized")]) == onnx.TensorProto.FLOAT]


def drop_value_info(path: Path) -> None:
    """Remove the intermediate shape annotations the quantizer writes (ONNX Runtime infers them again
    when it loads the model); on small encoders they are a visible share of the file."""
    import onnx

    m = onnx.load(str(path))
    del m.graph.value_info[:]
    write_bytes(path, m.SerializeToString())
