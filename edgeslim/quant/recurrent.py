"""INT8 for recurrent layers (GRU, LSTM, RNN): fake quantization for QAT, weight-only INT8 in ONNX.

What ONNX Runtime (1.2x-1.3x) can run, and so what this module does:
- **LSTM**: dynamic INT8 has a real integer kernel (`DynamicQuantizeLSTM`, made by ORT's
  `quantize_dynamic`); nothing to do here.
- **GRU, RNN**: ORT has no integer kernel (neither the dynamic quantizer nor the static QDQ quantizer
  handles them). `weight_only_recurrent` stores their W and R weights as int8 codes behind a
  Cast -> Mul decode (symmetric, one scale per gate row): the file shrinks about 4x on those tensors,
  the compute stays FP32 (ORT folds the decode at session load).
  Static QDQ leaves LSTM weights float too, so the static path uses the same rewrite for LSTM.
- **QAT**: `QuantRNN` fake-quantizes the weights of an `nn.GRU` / `nn.LSTM` / `nn.RNN` during training
  (symmetric, one scale per gate row, derived from the range: max|w| / qmax, so the largest
  weight of a row sits on the top code and `weight_only_recurrent` recovers the very same grid from
  the trained weights in the exported ONNX). Hidden-state and input activations stay float: no
  ONNX Runtime kernel would run them in integer. Biases stay float.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.graph import insert_before, outer_reads
from edgeslim.quant.fakequant import WeightQuant, weight_range

RECURRENT_OPS = ("GRU", "LSTM", "RNN")
NOTE = ("ONNX Runtime has no integer kernel for these recurrent ops here: their weights are stored int8 "
        "(weight-only, dequantized at run time) and they compute in FP32")


class QuantRNN(nn.Module):
    """An nn.GRU/LSTM/RNN whose weight matrices are fake-quantized (STE) on every forward. The float
    layer stays inside as `.inner` (the optimizer updates its shadow weights)."""

    def __init__(self, inner: nn.RNNBase, bits: int = 8):
        super().__init__()
        self.inner = inner
        names = [n for n in inner._flat_weights_names if n.startswith("weight_")]
        self.wq = nn.ModuleDict({  # per gate row (the rows of weight_ih/hh), derived scales: see the docstring
            n: WeightQuant(cast(torch.Tensor, getattr(inner, n)), bits, per_channel=True, lsq=False) for n in names
        })

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        return {n: q(getattr(self.inner, n)) for n, q in self.wq.items()}

    def forward(self, x: torch.Tensor, hx: object = None) -> object:
        args = (x,) if hx is None else (x, hx)
        return torch.func.functional_call(self.inner, self.quantized_weights(), args)

    @torch.no_grad()
    def baked(self) -> nn.RNNBase:
        """The float layer holding the quantized weight values."""
        for n, w in self.quantized_weights().items():
            cast(torch.Tensor, getattr(self.inner, n)).copy_(w)
        return self.inner


def wrap_recurrent(model: nn.Module, bits: int = 8) -> list[str]:
    """Replace every nn.GRU/LSTM/RNN of `model` (in place) by a QuantRNN. Returns their names."""
    done = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.RNNBase):
                setattr(mod, child_name, QuantRNN(child, bits))
                done.append(f"{name}.{child_name}" if name else child_name)
    return done


def recurrent_wrappers(model: nn.Module) -> dict[str, QuantRNN]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantRNN)}


def quantize_rows(w: np.ndarray, bits: int = 8, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales) of a recurrent weight (dirs, gates x hidden, width): symmetric,
    one scale per gate row (shared by the directions) or one per tensor; never a zero scale."""
    _, qmax = weight_range(bits)
    a = np.abs(w).max(axis=(0, 2)) if per_channel else np.abs(w).max()
    scale = np.maximum(np.asarray(a, np.float32) / np.float32(qmax), np.float32(1e-8)).astype(np.float32)
    s = scale.reshape(1, -1, 1) if per_channel else scale
    codes = np.clip(np.round(w / s), -qmax, qmax).astype(np.int8)
    return codes, scale


def weight_only_recurrent(src: Path, dst: Path, bits: int = 8, per_channel: bool = True,
                          ops: tuple[str, ...] = RECURRENT_OPS) -> list[str]:
    """Rewrite the float W (input 1) and R (input 2) initializers of every `ops` node as int8 codes decoded by
    Cast -> Mul with the per-row scales (weight-only INT8; the decode is folded at session load). Writes `dst` (may equal `src`); returns the rewritten nodes'
    op types (empty: nothing to rewrite, `dst` is a copy of `src`)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    slots = [(n, i) for n in g.node if n.op_type in ops for i in (1, 2)
             if len(n.input) > i and n.input[i] in inits]
    targets = {n.input[i] for n, i in slots}
    other_readers = {t for n in g.node for i, t in enumerate(n.input)
                     if t in targets and not (n.op_type in ops and i in (1, 2))}
    other_readers |= targets & {t for n in g.node for t in outer_reads(n)}  # read inside an If/Loop body
    before: dict[int, list] = {}
    new_inits = []
    made: set[str] = set()
    done: dict[int, str] = {}  # id(node) -> op type, in graph order
    for n, i in slots:
        t = n.input[i]
        if t not in made:  # one decode per weight, placed before its first reader
            made.add(t)
            codes, scale = quantize_rows(numpy_helper.to_array(inits[t]), bits, per_channel)
            # Cast -> Mul, not DequantizeLinear: ONNX Runtime folds a constant Cast -> Mul at session load but
            # keeps a DequantizeLinear on a weight and runs it on every call (see quant.float_storage)
            new_inits += [numpy_helper.from_array(codes, f"{t}_q"),
                          numpy_helper.from_array(scale.reshape(1, -1, 1) if per_channel else scale, f"{t}_scale")]
            before.setdefault(id(n), []).extend([
                helper.make_node("Cast", [f"{t}_q"], [f"{t}_qf"], to=onnx.TensorProto.FLOAT, name=f"{t}_Cast"),
                helper.make_node("Mul", [f"{t}_qf", f"{t}_scale"], [f"{t}_dq"], name=f"{t}_Decode")])
        n.input[i] = f"{t}_dq"
        done[id(n)] = n.op_type
    if not slots:
        if Path(src) != Path(dst):
            write_bytes(dst, m.SerializeToString())
        return []
    insert_before(g, before)
    keep = [t for t in g.initializer if t.name not in targets - other_readers]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    onnx.checker.check_model(m)
    write_bytes(dst, m.SerializeToString())
    return list(done.values())
