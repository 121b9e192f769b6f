"""Channel counts ONNX Runtime's CPU convolutions like, measured: latency is a staircase in the channel
count, not a line.

Why: ORT's FP32 convolutions run in a blocked layout (NCHWc, 16 channels per block with AVX-512, 8 with
AVX2), and its INT8 ones use their fast kernel only for some counts, so a layer pruned to 12 channels
costs what 16 cost, or more: measured on ResNet-8/digits (2026-12-05, this VM, batch 1, 1 thread), widths
12-24-48 ran 0.95x the speed of the unpruned 16-32-64. Pruning should land each layer on the *fast
side* of a step: the largest count of its step, where removing one more channel would not help.

How: for each distinct layer shape (input size, stride) a small ONNX model (one c -> c 3x3 conv + ReLU,
the cost of a pruned layer whose input and output both shrink) is built per candidate count and all are
timed together, interleaved, by the measurement core (`Measurer.time_together`); `fast_counts` keeps the counts
no larger count matches in speed. This module only builds models and reads timings: the timing is asked
of the caller's measurer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STEP_MARGIN = 0.04  # a larger count within 4% of a smaller one's time is on the same step (timer noise)


def conv_model(c: int, hw: tuple[int, ...], stride: int = 1, kernel: int = 3) -> bytes:
    """A serialized ONNX model: input [1, c, *hw] -> Conv(c -> c, kernel, stride, same padding) -> ReLU,
    random weights (timing does not depend on them). 1-D or 2-D by `len(hw)`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nd = len(hw)
    rng = np.random.default_rng(c)
    w = numpy_helper.from_array((rng.standard_normal((c, c, *([kernel] * nd))) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(c, np.float32), "b")
    pad = kernel // 2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kernel] * nd, strides=[stride] * nd,
                              pads=[pad] * (2 * nd), name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    y = onnx.ValueInfoProto(name="y")
    y.type.tensor_type.elem_type = TensorProto.FLOAT
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *hw])], [y],
                          [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def candidate_counts(c_max: int, step: int = 4) -> list[int]:
    """Counts to probe up to `c_max`: every multiple of `step` (and `c_max` itself)."""
    return sorted({*range(step, c_max + 1, step), c_max})


def time_channel_counts(measurer: Any, hw: tuple[int, ...], counts: Sequence[int], stride: int = 1, rounds: int = 30,
          per_round: int = 20) -> dict[int, float]:
    """{count: p50 ms} of `conv_model(count, hw, stride)` for every count, timed together (interleaved) by
    `measurer.compare` (the measurement core: `ctx.measure` in a run)."""
    with tempfile.TemporaryDirectory() as td:
        paths = {}
        for c in counts:
            p = Path(td) / f"c{c}.onnx"
            p.write_bytes(conv_model(c, hw, stride))
            paths[str(c)] = p
        feeds = {str(c): {"x": np.random.default_rng(0).random((1, c, *hw), dtype=np.float32)} for c in counts}
        lat = {}
        # one shared feed per count: several counts have different input shapes, so time them in one loop
        # through per-model feeds
        res = measurer.time_together(paths, feeds, rounds=rounds, per_round=per_round, warmup=5)
        for k, v in res.items():
            lat[int(k)] = v.p50_ms
    return lat


def fast_counts(times: Mapping[int, float], margin: float = STEP_MARGIN) -> list[int]:
    """The counts on the fast side of each step: `c` is kept when every larger count is more than `margin`
    slower than `c` (so nothing wider runs as fast). Ascending; the largest count is always kept."""
    cs = sorted(times)
    return [c for i, c in enumerate(cs) if all(times[d] > times[c] * (1 + margin) for d in cs[i + 1:])]


def round_down(n: float, fast: Sequence[int]) -> int:
    """The largest fast count <= `n`, else the smallest fast count."""
    below = [c for c in fast if c <= n + 1e-9]
    return max(below) if below else min(fast)


def conv_geometry(model: Any, input_shape: tuple[int, ...]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """{conv module path: (output channels, output spatial size)} from one forward pass of a batch of 2.
    Layers whose outputs are added together (a residual group) share both, so they get the same count."""
    import torch
    from torch import nn

    from edgeslim.models.probe import probe as run_probe

    geo: dict[str, tuple[int, tuple[int, ...]]] = {}

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            geo[name] = (int(out.shape[1]), tuple(int(s) for s in out.shape[2:]))
        return fn

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1]
    hs = [m.register_forward_hook(hook(n)) for n, m in convs]
    run_probe(model, torch.zeros(2, *input_shape), hs)
    return geo


def layer_ratios(geo: Mapping[str, tuple[int, tuple[int, ...]]], fast: Mapping[tuple[int, ...], Sequence[int]],
                 ratio: float | Mapping[tuple[int, tuple[int, ...]], float],
                 skip: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """Torch-Pruning ratios ({module path: fraction removed}) that leave each conv of `geo` (not in `skip`)
    with the fast count at or below (1 - `ratio`) of its channels (`fast[spatial size]`: the counts that
    `fast_counts` kept for that output size, cut at the layer's width). `ratio`: one for every layer, or
    one per layer class (channels, output size) as `layer_classes` lists them: layers added together in a
    residual group are of one class, so they get one count. The fraction is set half a channel below the
    exact one because Torch-Pruning keeps int(C x (1 - fraction)) channels."""
    out = {}
    for name, (c, hw) in geo.items():
        if name in skip:
            continue
        r = ratio if isinstance(ratio, (int, float)) else ratio.get((c, hw), 0.0)
        allowed = [k for k in fast.get(hw, ()) if k <= c] or [c]
        keep = round_down(c * (1 - r), allowed)
        if keep < c:
            out[name] = (c - keep - 0.5) / c
    return out


def layer_classes(geo: Mapping[str, tuple[int, tuple[int, ...]]], skip: set[str] | frozenset[str] = frozenset()
                  ) -> list[tuple[int, tuple[int, ...]]]:
    """The distinct (output channels, output size) of the convs in `geo` not in `skip`, widest output first."""
    return sorted({v for k, v in geo.items() if k not in skip}, key=lambda v: (-int(np.prod(v[1])), v[0]))
