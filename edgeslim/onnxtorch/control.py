"""ONNX control flow, run eagerly: `IfOp` (a constant condition picks its branch once at conversion, a computed
one with `bool(cond)` at run time) and `LoopOp` (trip count and condition read at run time). Their bodies are
`GraphModule`s whose weights are layers like any other; a traced export keeps the path its inputs took."""

from __future__ import annotations

from typing import Any

import onnx
import torch
from torch import nn


class IfOp(nn.Module):
    """ONNX If: a constant condition picks its branch once; otherwise `bool(cond)` picks at run time (eager)."""

    def __init__(self, n: onnx.NodeProto, ins: list, ctx: Any, consts: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from edgeslim.onnxtorch.convert import GraphModule  # the graph module builds these nodes

        br = {a.name: a.g for a in n.attribute}
        self.fixed: bool | None = None if ins[0] is None else bool(ins[0].reshape(-1)[0])
        if self.fixed is None or self.fixed:
            self.then_branch = GraphModule(br["then_branch"], consts, ctx)
        if self.fixed is None or not self.fixed:
            self.else_branch = GraphModule(br["else_branch"], consts, ctx)
        if self.fixed is not None:
            ctx.report.notes.append(f"If '{n.name}': constant condition, {'then' if self.fixed else 'else'} "
                                    "branch kept")
        self.outer = outer_names(br["then_branch"]) | outer_names(br["else_branch"])
        self.n_out = len(n.output)

    def select(self, env: dict[str, Any], *cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the branch the condition picks on a copy of the enclosing environment `env`."""
        take = self.fixed if self.fixed is not None else bool(cond[0].reshape(-1)[0])
        branch = self.then_branch if take else self.else_branch
        return tuple(branch.run(dict(env)))


class LoopOp(nn.Module):
    """ONNX Loop, run eagerly: trip count and condition read at run time, loop-carried values fed back, scan
    outputs stacked on a new axis 0 (empty when the loop runs no iteration). A traced export unrolls it."""

    def __init__(self, n: onnx.NodeProto, ins: list, ctx: Any, consts: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from edgeslim.onnxtorch.convert import GraphModule

        g = next(a.g for a in n.attribute if a.name == "body")
        self.body = GraphModule(g, consts, ctx)
        self.body_inputs = [i.name for i in g.input]          # iteration, condition, carried...
        self.n_carried = len(n.input) - 2
        self.slots = ["-" if not name else "d" if v is None else f"c{i}" for i, (name, v) in enumerate(zip(n.input, ins))]
        for i, v in enumerate(ins):
            if n.input[i] and v is not None:
                self.register_buffer(f"c{i}", v.clone())

    def select(self, env: dict[str, Any], *dyn: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(dyn)
        args = [None if s == "-" else next(it) if s == "d" else getattr(self, s) for s in self.slots]
        trips = int(args[0].reshape(-1)[0]) if args[0] is not None else None
        cond = bool(args[1].reshape(-1)[0]) if args[1] is not None else True
        carried: list[Any] = list(args[2:])
        scans: list[list[torch.Tensor]] = []
        i = 0
        while cond and (trips is None or i < trips):
            benv = dict(env)
            benv.update(zip(self.body_inputs, [torch.tensor(i, dtype=torch.int64), torch.tensor(cond)] + carried))
            outs = self.body.run(benv)
            cond = bool(outs[0].reshape(-1)[0])
            carried = list(outs[1 : 1 + self.n_carried])
            scans = scans or [[] for _ in outs[1 + self.n_carried:]]
            for k, o in enumerate(outs[1 + self.n_carried:]):
                scans[k].append(o)
            i += 1
        n_scan = len(self.body.outputs) - 1 - self.n_carried
        stacked = [torch.stack(s) for s in scans] if scans else [torch.empty(0) for _ in range(n_scan)]
        return tuple(carried + stacked)


def outer_names(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (incl. nested subgraphs)."""
    local = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        local.update(n.output)
    need: set[str] = set()
    for n in g.node:
        need.update(i for i in n.input if i)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                need |= outer_names(a.g)
    return need - local
