"""Which layers of a converted module must keep their output channels when a structured pruner (Torch-Pruning)
removes channels: the ones whose channels are graph outputs, and the ones whose output meets something the
dependency graph cannot see - a constant per-channel operand kept as a buffer (a decomposed LayerNorm's gamma),
a Reshape/Split/Slice with constant sizes over the channels (attention heads, LSTM gates), a product of two
computed tensors (attention scores), an If whose branches read it. Conservative: a layer in doubt is kept."""

from __future__ import annotations

from torch import nn

from edgeslim.onnxtorch import layers, ops
from edgeslim.onnxtorch.control import IfOp, LoopOp
from edgeslim.onnxtorch.convert import ConvertedModule, GraphModule

ELEMENTWISE_CONST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "PRelu", "Max", "Min", "Sum", "Mean", "Equal",
                     "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Concat"}
SHAPE_ONLY = {"Shape", "Size"}
CHANNEL_MIXING = {"MatMul", "Gemm", "Split", "LayerNormalization", "Softmax", "LogSoftmax", "Gather",
                  "ArgMax", "ArgMin", "Expand", "Tile", "Range", "ConstantOfShape"}


def _inner(mod: nn.Module) -> nn.Module | None:
    return getattr(mod, "conv", None) or getattr(mod, "linear", None) or getattr(mod, "rnn", None)


def _unsafe_op(op: ops.Op) -> bool:
    """Would channels pruned upstream break this op (not seen by the dependency graph)?"""
    if op.op_type in CHANNEL_MIXING:
        return True
    if op.op_type in ELEMENTWISE_CONST:
        return any(s.startswith("c") and getattr(op, s).numel() > 1 for s in op.slots)
    if op.op_type == "Reshape":  # constant or computed target: safe when the probe's rule only merges dims
        return op.rule is None or any(kind == "const" and v not in (1, -1) for kind, v, _ in op.rule)
    if op.op_type == "Slice":
        axes = op.py.get("p3") if "p3" in op.py else op.a.get("axes")
        ends = op.py.get("p2", op.a.get("ends", []))
        if not isinstance(ends, list):
            return True
        axes = list(axes) if axes is not None else list(range(len(ends)))
        return any(a in (1, -1) and abs(e) < 2**31 for a, e in zip(axes, ends))
    return False


def _walk(g: GraphModule, start: str, branch: bool) -> bool:
    """True when the channels of value `start` of `g` reach an op that cannot follow a pruned channel count
    (or, in an If `branch`, leave the branch: what the enclosing graph does with them is not looked at)."""
    readers: dict[str, list[int]] = {}
    for k, (_, dyn, _) in enumerate(g.steps):
        for name in dyn:
            readers.setdefault(name, []).append(k)
    stack, seen = [start], {start}
    while stack:
        v = stack.pop()
        if branch and v in g.outputs:
            return True
        for k in readers.get(v, []):
            key, _, outs = g.steps[k]
            mod = g.nodes[key]
            if isinstance(mod, IfOp | LoopOp):
                return True
            if _inner(mod) is not None:
                continue  # a layer reads it as input channels: the dependency graph prunes those
            if isinstance(mod, ops.Op):
                if mod.op_type in SHAPE_ONLY:
                    continue
                if _unsafe_op(mod):
                    return True
            elif not isinstance(mod, layers.BN):
                return True
            for o in outs:
                if o and o not in seen:
                    seen.add(o)
                    stack.append(o)
    return False


def _graphs(g: GraphModule) -> list[GraphModule]:
    out = [g]
    for mod in g.nodes.values():
        if isinstance(mod, IfOp | LoopOp):
            for br in (getattr(mod, "then_branch", None), getattr(mod, "else_branch", None), getattr(mod, "body", None)):
                if br is not None:
                    out += _graphs(br)
    return out


def unprunable_layers(module: ConvertedModule) -> list[nn.Module]:
    """Layers (nn.Conv*/nn.Linear/nn.LSTM/nn.GRU) to pass as Torch-Pruning's `ignored_layers`: output layers,
    recurrent layers, and those whose output channels meet an op the dependency graph cannot adjust."""
    found: dict[int, nn.Module] = {id(m): m for m in module.output_layers()}
    for g in _graphs(module.graph):
        branch = g is not module.graph
        for key, _, outs in g.steps:
            inner = _inner(g.nodes[key])
            if inner is None:
                continue
            if isinstance(inner, nn.LSTM | nn.GRU) or _walk(g, outs[0], branch):
                found[id(inner)] = inner
    return list(found.values())


def keep_whole(module: ConvertedModule) -> list[nn.Module]:
    """The layers a channel pruner of a converted module keeps whole (what `run`'s structured passes and
    `benchmarks/bench_convert_prune.py` pass as Torch-Pruning's `ignored_layers`): every Linear and recurrent
    layer (their neighbours' sizes are often constants of the graph, and Torch-Pruning 1.6's LSTM pruner mis-sizes
    the gate biases when it prunes hidden units) plus `unprunable_layers` (output layers, and layers whose channels
    meet what the dependency graph cannot follow, e.g. an STFT conv whose real and imaginary halves are taken by
    constant Slices, as in silero VAD). The input side of a kept layer may still be pruned with its producer."""
    found: dict[int, nn.Module] = {id(m): m for m in module.modules() if isinstance(m, nn.Linear | nn.RNNBase)}
    found.update((id(m), m) for m in unprunable_layers(module))
    return list(found.values())
