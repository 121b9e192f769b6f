"""The converter: an ONNX graph becomes a `ConvertedModule` that runs one small `nn.Module` per node in graph order.

Nodes whose inputs are all constant (initializers, `Constant` nodes, results of such nodes) are folded once at
conversion; weights of Conv/Gemm/MatMul/BatchNormalization/LSTM/GRU become parameters of real torch layers
(`layers.py`), every other op is an `ops.Op` (constant operands kept as buffers). Shape arithmetic
(Shape -> Gather -> Concat -> Reshape) runs on the live tensors, so a pruned model still reshapes; a Reshape
with a constant target learns, from one probe run, which input dimensions each output dimension comes from.
"""

from __future__ import annotations

import collections
import heapq
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.quant import QUANTIZED_OPS
from edgeslim.onnxtorch import layers, ops
from edgeslim.onnxtorch.control import IfOp, LoopOp, outer_names


@dataclass
class ConversionReport:
    """What the conversion did: op types met (incl. subgraphs), parameter count, human-readable notes."""

    ops: collections.Counter = field(default_factory=collections.Counter)
    notes: list[str] = field(default_factory=list)
    parameters: int = 0
    folded: int = 0   # nodes computed once at conversion (all inputs constant)


@dataclass
class Ctx:
    """Conversion state shared by a graph and its subgraphs."""

    where: str
    opset: int
    report: ConversionReport
    ranks: dict[str, int]     # value name -> rank, from ONNX shape inference (missing where unknown)


def _layer_of(mod: nn.Module) -> nn.Module | None:
    """The torch layer inside a weighted node module (Conv, Linear, LSTM/GRU), else None."""
    if isinstance(mod, layers.Conv):
        return mod.conv
    if isinstance(mod, layers.Linear):
        return mod.linear
    if isinstance(mod, layers.RNN):
        return mod.rnn
    return None


def _key(name: str, used: set[str]) -> str:
    """A unique attribute-safe module name for a node (readable in `named_modules`, e.g. for ignore lists)."""
    k = re.sub(r"\W", "_", name) or "node"
    if k[0].isdigit():
        k = "n" + k
    base, i = k, 1
    while k in used:
        i += 1
        k = f"{base}_{i}"
    used.add(k)
    return k


class GraphModule(nn.Module):
    """One ONNX graph (the main graph or an If branch): its node modules in order and its constant values."""

    def __init__(self, g: onnx.GraphProto, outer: dict[str, torch.Tensor], ctx: Ctx) -> None:
        super().__init__()
        self.steps: list[tuple[str, list[str], list[str]]] = []  # (module key, input names, output names)
        self.nodes = nn.ModuleDict()
        consts: dict[str, torch.Tensor] = dict(outer)
        for t in g.initializer:
            consts[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
        consumers = collections.Counter(i for n in g.node for i in n.input)
        for o in g.output:
            consumers[o.name] += 1
        for n in g.node:  # names If/Loop bodies read from this scope
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    consumers.update(outer_names(a.g))
        used: set[str] = set()
        self.producer: dict[str, int] = {}  # output name -> index into self.steps
        for n in _sorted(g):
            ctx.report.ops[n.op_type] += 1
            if n.op_type == "Constant":
                consts[n.output[0]] = ops.constant_value(n)
                continue
            ins: list[torch.Tensor | None] = [consts.get(i) if i else None for i in n.input]
            dyn = [i for i, v in zip(n.input, ins) if i and v is None]
            if self._bias_into_layer(n, ins, dyn, consumers):
                continue
            try:
                mod = build_module(n, ins, ctx, consts)
            except EdgeslimError:
                raise
            except Exception as e:  # an attribute or weight shape the builder cannot take
                raise EdgeslimError(f"{ctx.where}: cannot convert node '{n.name}' (op {n.op_type}): "
                                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
            if not dyn and not isinstance(mod, layers.Layer) and n.op_type not in ("If", "Loop"):
                folded = self._fold(mod, n)
                if folded is not None:
                    consts.update(folded)
                    ctx.report.folded += 1
                    continue
            self._add(n, mod, dyn, list(n.output), used)
        self.outputs = [o.name for o in g.output]
        # constants the graph reads at run time (graph outputs that are constants, outer names for branches)
        self.const_names: list[str] = []
        for i, name in enumerate(self.outputs):
            if name in consts and name not in {o for _, _, outs in self.steps for o in outs}:
                self.register_buffer(f"out_const_{i}", consts[name].clone())
                self.const_names.append(name)

    def _add(self, n: onnx.NodeProto, mod: nn.Module, dyn: list[str], outs: list[str], used: set[str]) -> None:
        key = _key(n.name or f"{n.op_type}_{len(self.steps)}", used)
        self.nodes[key] = mod
        for o in outs:
            self.producer[o] = len(self.steps)
        self.steps.append((key, dyn, outs))

    def _bias_into_layer(self, n: onnx.NodeProto, ins: list, dyn: list[str], consumers: collections.Counter) -> bool:
        """Add(y, b) where y is the only use of a bias-free Conv/Linear output and b a per-channel constant
        (Paddle's conv + Reshape(bias) + Add, MatMul + Add): b becomes the layer's bias parameter, so pruning
        the layer's channels prunes the bias with them."""
        if n.op_type != "Add" or len(dyn) != 1 or consumers[dyn[0]] != 1 or dyn[0] not in self.producer:
            return False
        b = next(v for v in ins if v is not None)
        k = self.producer[dyn[0]]
        key, _, outs = self.steps[k]
        mod = self.nodes[key]
        layer = mod.conv if isinstance(mod, layers.Conv) else mod.linear if isinstance(mod, layers.Linear) else None
        if layer is None or layer.bias is not None or len(outs) != 1 or not b.is_floating_point():
            return False
        ch = layer.weight.shape[1] if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) \
            else layer.weight.shape[0]
        axis = -1 if isinstance(layer, nn.Linear) else -(layer.weight.dim() - 1)  # channel axis from the right
        if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            ch *= layer.groups
        if b.numel() != ch or b.dim() < -axis or b.shape[axis] != ch:
            return False
        layer.bias = nn.Parameter(b.reshape(-1).float().clone())
        del self.producer[outs[0]]
        self.steps[k] = (key, self.steps[k][1], [n.output[0]])
        self.producer[n.output[0]] = k
        return True

    def layers_feeding(self, names: list[str]) -> tuple[list[nn.Module], set[str]]:
        """(layers met walking back from `names` until a weighted layer, names read from an enclosing scope)."""
        found: list[nn.Module] = []
        outer: set[str] = set()
        seen: set[str] = set()
        stack = list(names)
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v not in self.producer:
                outer.add(v)
                continue
            key, dyn, outs = self.steps[self.producer[v]]
            mod = self.nodes[key]
            inner = _layer_of(mod)
            if inner is not None:
                found.append(inner)
            elif isinstance(mod, IfOp):
                for br in (getattr(mod, "then_branch", None), getattr(mod, "else_branch", None)):
                    if br is not None:
                        f, o = br.layers_feeding([br.outputs[outs.index(v)]])
                        found += f
                        stack += list(o)
                stack += dyn
            elif isinstance(mod, LoopOp):  # every layer of the body may feed the result
                found += [m for b in mod.body.modules() for m in [_layer_of(b)] if m is not None]
                stack += dyn
            elif not (isinstance(mod, ops.Op) and mod.op_type in ("Shape", "Size")):  # shape reads: no channels
                stack += dyn
        return found, outer

    @staticmethod
    def _fold(mod: nn.Module, n: onnx.NodeProto) -> dict[str, torch.Tensor] | None:
        """The outputs of a node whose inputs are all constant, computed once (None: leave it to run time)."""
        try:
            with torch.no_grad():
                res = mod()
        except Exception:
            return None  # leave it to run time
        res = res if isinstance(res, tuple) else (res,)
        return {o: r for o, r in zip(n.output, res) if o}

    def run(self, env: dict[str, Any]) -> list[torch.Tensor]:
        """Run every node on `env` (name -> tensor; outer values for a branch); returns the graph outputs."""
        for key, dyn, outs in self.steps:
            mod = self.nodes[key]
            args = [env[i] for i in dyn]
            res = mod.select(env, *args) if isinstance(mod, IfOp | LoopOp) else mod(*args)
            if isinstance(res, tuple):
                for o, r in zip(outs, res):
                    if o:
                        env[o] = r
            else:
                env[outs[0]] = res
        for name in self.const_names:
            env.setdefault(name, getattr(self, f"out_const_{self.outputs.index(name)}"))
        return [env[o] for o in self.outputs]


class ConvertedModule(nn.Module):
    """An ONNX model as a trainable module: `forward(*inputs)` in graph-input order, returns a tuple of outputs."""

    def __init__(self, graph: GraphModule, input_names: list[str], output_names: list[str],
                 dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        # the source graph's symbolic dims per input/output name (axis -> symbol): what `export_converted`
        # keeps symbolic with dynamic=True
        self.dynamic_axes: dict[str, dict[int, str]] = dict(dynamic_axes or {})

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise EdgeslimError(f"the converted model takes {len(self.input_names)} inputs "
                                f"({', '.join(self.input_names)}), got {len(inputs)}")
        env: dict[str, Any] = dict(zip(self.input_names, inputs))
        return tuple(self.graph.run(env))

    def output_layers(self) -> list[nn.Module]:
        """The torch layers (Conv*/Linear/LSTM/GRU) whose output channels reach a graph output through ops that
        keep channels (activations, BN, reshapes, concat, If branches): pruning their output channels would
        change an output's shape, so a pruner leaves them out (Torch-Pruning's `ignored_layers`)."""
        found, _ = self.graph.layers_feeding(self.output_names)
        return list({id(m): m for m in found}.values())


def build_module(n: onnx.NodeProto, ins: list[torch.Tensor | None], ctx: Ctx, consts: dict[str, torch.Tensor]) -> nn.Module:
    """The module for node `n` (`ins`: constant value per input, None where computed at run time or absent)."""
    if n.op_type in layers.BUILDERS:
        return layers.BUILDERS[n.op_type](n, ins, ctx)
    if n.op_type == "If":
        return IfOp(n, ins, ctx, consts)
    if n.op_type == "Loop":
        return LoopOp(n, ins, ctx, consts)
    if n.op_type in QUANTIZED_OPS:  # a model someone already quantized: no float weights to train
        raise EdgeslimError(f"{ctx.where}: node '{n.name}' (op {n.op_type}): the model is already quantized, so it "
                            "cannot be made trainable; compress the float model it was made from (measure, fit "
                            "and arena take this one as it is)")
    if n.domain not in ("", "ai.onnx") or n.op_type not in ops.FUNCS:
        supported = sorted(set(ops.FUNCS) | set(layers.BUILDERS) | {"If", "Loop", "Constant"})
        dom = f"{n.domain}." if n.domain not in ("", "ai.onnx") else ""
        raise EdgeslimError(f"{ctx.where}: cannot convert node '{n.name}' (op {dom}{n.op_type}): not supported; "
                            f"supported ops: {', '.join(supported)}")
    return ops.Op(n, ins, ctx.opset, ctx.ranks)


def _sorted(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of `g` in an order where every value is produced before it is read (files written by some
    tools, e.g. ONNX Runtime's quantizers, list a node before its producer); stable for sorted graphs."""
    reads = [set(i for i in n.input if i) | set().union(*[outer_names(a.g) for a in n.attribute
                                                        if a.type == onnx.AttributeProto.GRAPH])
             for n in g.node]
    made = {o: k for k, n in enumerate(g.node) for o in n.output if o}
    deps = [{made[i] for i in r if i in made and made[i] != k} for k, r in enumerate(reads)]
    users: list[list[int]] = [[] for _ in g.node]
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    waiting = [len(d) for d in deps]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)  # Kahn's algorithm, lowest file position first: a sorted graph keeps its order
    order: list[onnx.NodeProto] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(g.node[k])
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(g.node):  # a cycle: left in file order, the run fails on it as in ONNX Runtime
        placed = {id(n) for n in order}
        order += [n for n in g.node if id(n) not in placed]
    return order


def onnx_to_torch(
    model: str | Path | onnx.ModelProto, *, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[ConvertedModule, ConversionReport]:
    """Convert an ONNX model (file or ModelProto) to a trainable `ConvertedModule`.

    `input_shapes` (name -> shape) fixes the probe run that teaches constant-target Reshapes which input
    dimensions they follow (without it, static dims of the graph and 1 / 64 for symbolic ones are tried).
    An op that cannot be converted raises `EdgeslimError` naming the op, the node and the file.
    """
    from edgeslim.onnxkit.load import default_opset, read_onnx
    from edgeslim.onnxkit.shapes import infer_shapes

    where = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    if not isinstance(model, onnx.ModelProto):
        from edgeslim.untrusted import check_onnx_file

        check_onnx_file(model)  # missing, empty, corrupt, external data outside its folder: one line
    m = read_onnx(model)
    inferred, _ = infer_shapes(m)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
             if v.type.tensor_type.HasField("shape")}
    report = ConversionReport()
    ctx = Ctx(where=where, opset=default_opset(m) or 13, report=report, ranks=ranks)
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    graph = GraphModule(m.graph, {}, ctx)
    module = ConvertedModule(graph, [i.name for i in inputs], [o.name for o in m.graph.output],
                             {v.name: _symbolic(v) for v in [*inputs, *m.graph.output] if _symbolic(v)})
    report.parameters = sum(p.numel() for p in module.parameters())
    live = sum(1 for x in module.modules() if isinstance(x, IfOp) and x.fixed is None)
    if live:
        report.notes.append(f"{live} If node(s) pick their branch at run time (eager); a traced export keeps "
                            "the branches its example inputs took")
    _probe(module, inputs, input_shapes or {}, report)
    return module, report


def _symbolic(v: onnx.ValueInfoProto) -> dict[int, str]:
    """Axis -> symbol for the dims of `v` that are not fixed (named, unknown or <= 0)."""
    return {k: (d.dim_param or f"{v.name}_dim{k}") for k, d in enumerate(v.type.tensor_type.shape.dim)
            if not (d.HasField("dim_value") and d.dim_value > 0)}


def _probe_feed(inp: onnx.ValueInfoProto, shape: tuple[int, ...] | None, size: int) -> torch.Tensor:
    """A synthetic input: `shape`, else the declared dims with batch-like symbols (axis 0, or a name with
    'batch') at 1 and the other symbolic dims at `size` (the same symbol, the same value)."""
    tt = inp.type.tensor_type
    if shape is None:
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                      1 if i == 0 or "batch" in d.dim_param.lower() else size for i, d in enumerate(tt.shape.dim))
    dtype = ops.torch_dtype(tt.elem_type)
    if dtype.is_floating_point:
        return torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if dtype == torch.int64 and len(shape) == 0:
        return torch.tensor(16000, dtype=dtype)  # a scalar int is most often a rate or a count
    return torch.zeros(shape, dtype=dtype)


def _probe(module: ConvertedModule, inputs: list[onnx.ValueInfoProto], shapes: dict, report: ConversionReport) -> None:
    """One run on synthetic inputs with every Reshape recording how its output dims follow its input dims
    (symbolic dims without `shapes` tried at 64, then 512)."""
    reshapes = [m for m in module.modules() if isinstance(m, ops.Op) and m.op_type == "Reshape"]
    for r in reshapes:
        r.recording = True
    err = ""
    try:
        for size in (64, 512):
            feeds = [_probe_feed(i, tuple(shapes[i.name]) if i.name in shapes else None, size) for i in inputs]
            try:
                with torch.no_grad():
                    module(*feeds)
                err = ""
                break
            except Exception as e:
                err = (f"probe run at shapes {[tuple(f.shape) for f in feeds]} failed ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''}); constant Reshape targets kept as they are "
                       "(pass input_shapes)")
                if all(i.name in shapes for i in inputs):
                    break
    finally:
        for r in reshapes:
            r.recording = False
    if err:
        report.notes.append(err)
    learned = sum(1 for r in reshapes if r.rule is not None and r.const(1))
    if learned:
        report.notes.append(f"{learned} constant Reshape target(s) follow the input's dimensions")
