"""Sequence models for 1-D signals: a GRU and an LSTM classifier, and a small transformer classifier.

Inputs follow the task layout (`edgeslim.data.task`): sequences `(C, L)` are read along L with C
features per time step; feature vectors `(F,)` are one-channel sequences; images `(C, H, W)` are read
row by row (H steps of C*W features). The recurrent models may take `frame` consecutive samples per
step (L / frame steps of C*frame features, as audio front ends frame a signal): fewer, wider steps cost
fewer recurrent MACs and train faster than one sample a step.

ONNX: `nn.GRU` / `nn.LSTM` export as ONNX `GRU` / `LSTM` ops (opset 17, weights as initializers);
the transformer's attention is written out (Linear projections, two MatMuls, Softmax) so it exports
as plain MatMul/Gemm ops that ONNX Runtime's quantizers and the MAC counters understand, and so the
fake-quant and pruning passes that walk `nn.Linear` layers reach every projection.

MACs (per sample, `edgeslim.models.counts`): a recurrent layer does T x G x H x (I + H) for G gates
(GRU 3, LSTM 4), T steps, input width I, hidden width H; attention adds 2 x T^2 x D per layer
(scores and weighted sum) on top of its Linear layers (`matmul_macs`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeslim.errors import EdgeslimError


def sequence_layout(input_shape: tuple[int, ...], frame: int | None = 1) -> tuple[int, int]:
    """(time steps, features per step) of a task input read `frame` samples a step; `frame=None`
    picks the largest divisor of the length up to 4."""
    if len(input_shape) == 1:
        channels, length = 1, input_shape[0]
    elif len(input_shape) == 2:
        channels, length = input_shape
    else:  # images: rows are the steps
        channels, length = input_shape[0] * input_shape[2], input_shape[1]
    if frame is None:
        frame = max(f for f in range(1, 5) if length % f == 0)
    if frame < 1 or length % frame:
        raise EdgeslimError(
            f"frame {frame} does not divide the sequence length {length} of inputs {tuple(input_shape)}; "
            f"valid frames: {', '.join(str(f) for f in range(1, length + 1) if length % f == 0)}"
        )
    return length // frame, channels * frame


class ToSteps(nn.Module):
    """(N, *input_shape) -> (N, T, F): time steps along the last signal axis, `frame` samples a step."""

    def __init__(self, input_shape: tuple[int, ...], frame: int | None = 1):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.steps, self.features = sequence_layout(self.input_shape, frame)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.input_shape) == 3:  # (N, C, H, W) -> (N, H, C*W)
            x = x.permute(0, 2, 1, 3)
        elif len(self.input_shape) == 2 and self.input_shape[0] > 1:  # (N, C, L) -> (N, L, C)
            x = x.transpose(1, 2)
        # one channel (or rows already moved forward): a reshape frames the signal, batch stays -1
        return x.reshape(-1, self.steps, self.features)


class RecurrentClassifier(nn.Module):
    """A GRU or LSTM over the framed signal; the last step's hidden state (or the mean over steps with
    `pool: mean`) feeds a linear classifier. Unidirectional, so it can also run streaming. `frame`:
    samples per step (default: the largest divisor of the length up to 4, e.g. 4 on MNIST-1D's 40)."""

    cell: type[nn.GRU] | type[nn.LSTM] = nn.GRU

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32, layers: int = 1,
                 frame: int | None = None, pool: str = "last", dropout: float = 0.0):
        super().__init__()
        if pool not in ("last", "mean"):
            raise EdgeslimError(f"pool must be 'last' or 'mean', got '{pool}'")
        if hidden < 1 or layers < 1:
            raise EdgeslimError(f"hidden and layers must be >= 1, got hidden={hidden}, layers={layers}")
        self.steps_in = ToSteps(input_shape, frame)
        self.pool = pool
        self.rnn = self.cell(self.steps_in.features, hidden, num_layers=layers, batch_first=True,
                             dropout=dropout if layers > 1 else 0.0)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.steps_in(x))  # (N, T, H)
        feat = y.mean(1) if self.pool == "mean" else y[:, -1]
        return self.fc(feat)


class GRUClassifier(RecurrentClassifier):
    cell = nn.GRU


class LSTMClassifier(RecurrentClassifier):
    cell = nn.LSTM


class Attention(nn.Module):
    """Multi-head self-attention written out: qkv projection, softmax(q k^T / sqrt(d)) v, projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, d = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (N, heads, T, head_dim)
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim)), dim=-1)  # (N, h, T, T)
        y = (att @ v).transpose(1, 2).reshape(-1, t, d)  # (N, T, D)
        return self.proj(y)

    def matmul_macs(self, x: torch.Tensor) -> int:
        """MACs per sample of the two attention products (the projections are nn.Linear, counted there)."""
        t, d = int(x.shape[1]), int(x.shape[2])
        return 2 * t * t * d


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TransformerClassifier(nn.Module):
    """A small transformer for 1-D signals: a convolutional stem (a k=5 conv, then a k=3 conv with stride
    `patch` that makes the tokens), learned position embeddings, `depth` pre-norm encoder blocks, mean
    pooling over tokens and a linear classifier. `heads` is lowered to a divisor of `dim` if needed, so
    a width multiplier can scale `dim` freely."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, mlp: int = 128, patch: int = 2, dropout: float = 0.1):
        super().__init__()
        if dim < 1 or depth < 0 or mlp < 1 or patch < 1:
            raise EdgeslimError(f"transformer needs dim, mlp, patch >= 1 and depth >= 0; got dim={dim}, "
                                f"depth={depth}, mlp={mlp}, patch={patch}")
        heads = max(h for h in range(1, max(1, min(heads, dim)) + 1) if dim % h == 0)
        steps, feats = sequence_layout(input_shape, 1)
        self.to_seq = ToSteps(input_shape, 1)  # (N, T, F); the stem wants channels first
        half = max(1, dim // 2)
        self.stem = nn.Sequential(
            nn.Conv1d(feats, half, 5, 1, 2), nn.GELU(),
            nn.Conv1d(half, dim, 3, patch, 1), nn.GELU(),
        )
        tokens = (steps - 1) // patch + 1
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def prune_ignored(self) -> list[nn.Module]:
        """For structured pruning: keep the residual stream (width `dim`) and the attention projections
        whole, so what goes is the stem's hidden channels and each block's FFN neurons."""
        keep: list[nn.Module] = [self.stem[2], self.norm, self.fc]
        for b in self.blocks:
            assert isinstance(b, EncoderBlock)
            keep += [b.ln1, b.ln2, b.attn.qkv, b.attn.proj, b.mlp[3]]
        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.to_seq(x).transpose(1, 2))  # (N, D, tokens)
        x = x.transpose(1, 2) + self.pos  # (N, tokens, D)
        x = self.norm(self.blocks(x))
        return self.fc(x.mean(1))
