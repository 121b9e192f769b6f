"""ONNX nodes with weights as real torch layers (parameters Torch-Pruning and optimisers see):
Conv -> nn.ConvNd, ConvTranspose -> nn.ConvTransposeNd, Gemm / MatMul with a constant 2-D weight -> nn.Linear,
BatchNormalization -> nn.BatchNormNd (running statistics from the file, eval behaviour), LSTM/GRU -> nn.LSTM/nn.GRU
with ONNX's gate order (LSTM i,o,f,c; GRU z,r,h) permuted to torch's (i,f,g,o; r,z,n)."""

from __future__ import annotations

from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.onnxtorch import ops


class Layer(nn.Module):
    """Base of the weighted nodes (never constant-folded: their weights are what training changes)."""


def _need(t: torch.Tensor | None, what: str) -> torch.Tensor:
    if t is None:
        raise ValueError(f"{what} is computed at run time, not a constant")
    return t.float()


class Conv(Layer):
    """Conv with explicit (possibly asymmetric) or auto pads; the weight/bias live in `self.conv`."""

    def __init__(self, n: onnx.NodeProto, ins: list, ctx: Any) -> None:
        super().__init__()
        a = ops.attrs_of(n)
        w = _need(ins[1], "the weight")
        self.transposed = n.op_type == "ConvTranspose"
        nd = w.dim() - 2
        groups = a.get("group", 1)
        stride, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
        pads = list(a.get("pads", [0] * 2 * nd))
        self.auto = a.get("auto_pad", "NOTSET")
        self.pad: list[int] | None = None
        if pads[:nd] != pads[nd:]:
            if self.transposed:
                raise ValueError("asymmetric pads on ConvTranspose")
            self.pad = [p for k in range(nd - 1, -1, -1) for p in (pads[k], pads[k + nd])]
            pads = [0] * 2 * nd
        bias = ins[2] if len(ins) > 2 else None
        if len(n.input) > 2 and n.input[2] and bias is None:
            raise ValueError("the bias is computed at run time, not a constant")
        if self.transposed:
            if "output_shape" in a:
                raise ValueError("ConvTranspose with output_shape")
            tcls: Any = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][nd - 1]
            self.conv: Any = tcls(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride, pads[:nd],
                                  a.get("output_padding", [0] * nd), groups, bias is not None, dil)
        else:
            cls: Any = [nn.Conv1d, nn.Conv2d, nn.Conv3d][nd - 1]
            self.conv = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, pads[:nd], dil, groups,
                            bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            if bias is not None:
                self.conv.bias.copy_(bias.float())
        self.k, self.s, self.d = list(w.shape[2:]), list(stride), list(dil)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        elif self.auto in ("SAME_UPPER", "SAME_LOWER") and not self.transposed:
            tp: list[int] = []
            for i in range(len(self.k) - 1, -1, -1):  # pads from the live input size
                size = x.shape[2 + i]
                out = -(-size // self.s[i])
                total = max(0, (out - 1) * self.s[i] + (self.k[i] - 1) * self.d[i] + 1 - size)
                lo = total // 2 if self.auto == "SAME_UPPER" else total - total // 2
                tp += [lo, total - lo]
            x = F.pad(x, tp)
        return self.conv(x)


def _bn(n: onnx.NodeProto, ins: list, ctx: Any) -> nn.Module:
    a = ops.attrs_of(n)
    scale, b, mean, var = (_need(t, w) for t, w in zip(ins[1:5], ("scale", "bias", "mean", "var")))
    rank = ctx.ranks.get(n.input[0])
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank or 0, AnyRankBN)
    bn: Any = cls(scale.numel(), eps=a.get("epsilon", 1e-5), momentum=1.0 - a.get("momentum", 0.9))
    with torch.no_grad():
        bn.weight.copy_(scale)
        bn.bias.copy_(b)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    bn.eval()
    return BN(bn)


class AnyRankBN(nn.modules.batchnorm._BatchNorm):
    """Batch norm for an input whose rank shape inference could not tell (any rank >= 2)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"batch norm needs at least 2 dims, got {input.dim()}")


class BN(Layer):
    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class Linear(Layer):
    """y = x @ W^T + b over the last dim (Gemm with transA=0, or MatMul with a constant 2-D weight)."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.linear = lin

    def forward(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def linear(n: onnx.NodeProto, w: torch.Tensor, bias: torch.Tensor | None, transpose: bool,
           alpha: float = 1.0, beta: float = 1.0) -> Linear:
    """`w` as ONNX holds it ([in, out], or [out, in] when `transpose`), `bias` broadcastable to [out]."""
    w = w.float() if transpose else w.float().t()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(alpha * w)
        if bias is not None:
            lin.bias.copy_(beta * bias.float().reshape(-1).expand(w.shape[0]))
    return Linear(lin)


def _gemm(n: onnx.NodeProto, ins: list, ctx: Any) -> nn.Module:
    a = ops.attrs_of(n)
    c = ins[2] if len(ins) > 2 else None
    has_c = len(n.input) > 2 and bool(n.input[2])
    if ins[1] is None or a.get("transA", 0) or (has_c and (c is None or c.numel() not in (1, _out(ins[1], a)))):
        return ops.Op(n, ins, ctx.opset, ctx.ranks)   # no constant weight: plain matrix product
    return linear(n, ins[1], c, bool(a.get("transB", 0)), a.get("alpha", 1.0), a.get("beta", 1.0))


def _out(w: torch.Tensor, a: dict) -> int:
    return int(w.shape[0] if a.get("transB", 0) else w.shape[1])


def _matmul(n: onnx.NodeProto, ins: list, ctx: Any) -> nn.Module:
    if ins[1] is not None and ins[1].dim() == 2 and ins[0] is None and ins[1].is_floating_point():
        return linear(n, ins[1], None, transpose=False)
    return ops.Op(n, ins, ctx.opset, ctx.ranks)


def _perm(h: int, blocks: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(k * h, (k + 1) * h) for k in blocks])


class RNN(Layer):
    """ONNX LSTM/GRU (layout 0: X [T, B, I]) on nn.LSTM/nn.GRU; outputs Y [T, D, B, H], Y_h [D, B, H] (, Y_c)."""

    def __init__(self, n: onnx.NodeProto, ins: list, ctx: Any) -> None:
        super().__init__()
        a = ops.attrs_of(n)
        self.lstm = n.op_type == "LSTM"
        for bad in ("clip", "activations", "activation_alpha", "activation_beta"):
            if bad in a and not (bad == "activations" and _default_acts(a[bad], self.lstm)):
                raise ValueError(f"attribute {bad} is not supported")
        if a.get("layout", 0) != 0 or a.get("input_forget", 0):
            raise ValueError("layout=1 / input_forget are not supported")
        if self.lstm and len(n.input) > 7 and n.input[7]:
            raise ValueError("peephole weights (P) are not supported")
        if not self.lstm and not a.get("linear_before_reset", 0):
            raise ValueError("GRU with linear_before_reset=0 has no torch equivalent")
        w, r = _need(ins[1], "W"), _need(ins[2], "R")
        h = int(a["hidden_size"])
        direction = a.get("direction", "forward")
        self.reverse = direction == "reverse"
        dirs = 2 if direction == "bidirectional" else 1
        gates = 4 if self.lstm else 3
        b = ins[3] if len(ins) > 3 and ins[3] is not None else torch.zeros(dirs, 2 * gates * h)
        cls = nn.LSTM if self.lstm else nn.GRU
        self.rnn = cls(w.shape[2], h, bidirectional=dirs == 2)
        perm = _perm(h, [0, 2, 3, 1] if self.lstm else [1, 0, 2])
        with torch.no_grad():
            for d in range(dirs):
                sfx = "_reverse" if d == 1 else ""
                getattr(self.rnn, f"weight_ih_l0{sfx}").copy_(w[d][perm])
                getattr(self.rnn, f"weight_hh_l0{sfx}").copy_(r[d][perm])
                getattr(self.rnn, f"bias_ih_l0{sfx}").copy_(b[d, : gates * h].float()[perm])
                getattr(self.rnn, f"bias_hh_l0{sfx}").copy_(b[d, gates * h:].float()[perm])
        self.dirs, self.h = dirs, h
        names = list(n.input) + [""] * (7 - len(n.input))
        self.slots = ["d" if name and ins[i] is None else ("c" if name else "-") for i, name in enumerate(names)]
        for i in (4, 5, 6):
            if self.slots[i] == "c":
                self.register_buffer(f"c{i}", ins[i].float().clone())
        self.seq_note = self.slots[4] != "-"

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(xs)
        args: list[Any] = []
        for i, s in enumerate(self.slots[:7]):
            args.append(next(it) if s == "d" else getattr(self, f"c{i}", None) if s == "c" else None)
        x, h0, c0 = args[0], args[5], args[6]  # sequence_lens (args[4]): full-length sequences assumed
        t, bsz = x.shape[0], x.shape[1]
        if h0 is None:
            h0 = x.new_zeros(self.dirs, bsz, self.h)
        if self.reverse:
            x = torch.flip(x, [0])
        if self.lstm:
            c0 = x.new_zeros(self.dirs, bsz, self.h) if c0 is None else c0
            y, (hn, cn) = self.rnn(x, (h0, c0))
        else:
            y, hn = self.rnn(x, h0)
        if self.reverse:
            y = torch.flip(y, [0])
        y = y.reshape(t, bsz, self.dirs, self.h).permute(0, 2, 1, 3)
        return (y, hn, cn) if self.lstm else (y, hn)


def _default_acts(acts: list[str], lstm: bool) -> bool:
    want = ["sigmoid", "tanh", "tanh"] if lstm else ["sigmoid", "tanh"]
    return [s.lower() for s in acts] in (want, want * 2)


BUILDERS = {"Conv": Conv, "ConvTranspose": Conv, "BatchNormalization": _bn, "Gemm": _gemm, "MatMul": _matmul,
            "LSTM": RNN, "GRU": RNN}
