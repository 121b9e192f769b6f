"""Figures of an ONNX graph at given input shapes, for the measurement core: parameters and MACs from the
graph, the activation arena (planner) and energy (measured or estimated, labelled). Exports that compute
Reshape targets from `Shape` ops defeat ONNX shape inference; with the inputs made static, ONNX Runtime's
constant folding turns those into constants, so counts and the planner get a second try on that graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.measure.source import has_control_flow


def graph_counts(proto: Any, shapes: dict[str, list[int]]) -> tuple[int | None, int | None, int | None]:
    """(parameters, non-zero parameters, MACs per sample) from the graph's constants and op shapes."""
    from onnx import numpy_helper

    from edgeslim.onnxkit.graph import graphs

    params = nonzero = 0
    for g in graphs(proto.graph):
        for t in g.initializer:
            a = numpy_helper.to_array(t)
            params += int(a.size)
            nonzero += int(np.count_nonzero(a))
        for n in g.node:
            if n.op_type == "Constant":
                for at in n.attribute:
                    if at.name == "value" and at.HasField("t") and len(at.t.dims):
                        a = numpy_helper.to_array(at.t)
                        if a.size >= 16:  # weights, not shape vectors
                            params += int(a.size)
                            nonzero += int(np.count_nonzero(a))
    from edgeslim.measure.onnx_counts import MAC_OPS, count_onnx

    macs: int | None = None
    for form in (lambda: proto, lambda: _folded(proto, shapes)):  # folded when some MAC layer's shapes are unknown
        try:
            c = count_onnx(form(), shapes)
        except Exception:  # a graph shape inference cannot follow: no MAC count rather than a wrong one
            continue
        macs = max(macs or 0, c.macs) or None
        if not any(x.op in MAC_OPS and not x.macs for x in c.layers):
            break
    return params, nonzero, macs


def arena_fields(proto: Any, path: Path, shapes: dict[str, list[int]], reorder: bool = True) -> dict[str, Any]:
    """Activation arena (bytes) of the planner at the feed's shapes; with If/Loop/Scan bodies or tensors of
    unknown shape it is a lower bound (`arena_lower_bound`, `arena_note`). Exports whose Reshape targets come
    from `Shape` ops get a second try after ONNX Runtime's constant folding at static shapes."""
    from edgeslim.measure.arena import plan_activation_arena

    def attempt(m: Any) -> tuple[Any, str]:
        try:
            return plan_activation_arena(m, shapes=shapes, max_states=2000, reorder=reorder), ""
        except Exception as e:  # EdgeslimError or a shape-inference failure: try another form or report
            return None, (str(e).splitlines()[0] if str(e) else type(e).__name__)[:200]

    plan, note = attempt(proto)
    if plan is None or plan.unknown_tensors:
        try:
            folded, _ = attempt(_folded(proto, shapes))
        except Exception:  # ONNX Runtime cannot fold it: keep the first plan
            folded = None
        if folded is not None and (plan is None or len(folded.unknown_tensors) < len(plan.unknown_tensors)):
            plan = folded
    if plan is None:
        return {"arena_bytes": None, "arena_note": f"the planner cannot size this graph ({note})"}
    flow = has_control_flow(proto)
    d: dict[str, Any] = {"arena_bytes": plan.arena_bytes, "arena_bytes_reordered": plan.reordered_arena_bytes,
                         "naive_activation_bytes": plan.naive_bytes}
    if flow or plan.unknown_tensors:
        why = ["If/Loop/Scan bodies are not planned"] if flow else []
        if plan.unknown_tensors:
            why.append(f"{len(plan.unknown_tensors)} tensors of unknown shape count 0 B")
        d.update(arena_lower_bound=True, arena_note="lower bound: " + "; ".join(why))
    return d


def _folded(proto: Any, shapes: dict[str, list[int]]) -> Any:
    import onnx

    from edgeslim.onnxkit.session import ort_optimize

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for v in m.graph.input:
        if v.name in shapes:
            dims = v.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[v.name]:
                dims.add().dim_value = int(d)
    return ort_optimize(m)


def energy_fields(proto: Any, dev: Any, runner: Any, shapes: dict[str, list[int]], threads: int = 1,
                  measured_ms: float | None = None) -> dict:
    """Energy per inference (mJ) with its label (`measure.energy`): measured (RAPL) for this host where
    readable; else the analytic estimate for `dev`, on this host with its static term on the measured
    latency (`measured_ms`, or timed here with `runner`), and `incomplete: N ops not counted` when If/Loop/Scan
    bodies or MAC layers of unknown shape escaped the count."""
    from edgeslim.measure.energy import estimate_energy, measure_energy, on_measured_latency

    e = measure_energy(runner, threads=threads) if runner is not None else None
    if e is None:
        try:
            e = estimate_energy(proto, dev, shapes=shapes)
            if _unsized_macs(e):  # Reshape targets from Shape ops (transformer exports): fold at static shapes
                e = _more_macs(e, lambda: estimate_energy(_folded(proto, shapes), dev, shapes=shapes))
        except Exception as err:  # a graph the counter cannot follow: say so, do not guess
            return {"energy_mj": None, "energy_method": "unavailable",
                    "energy_note": f"no estimate: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}"}
        if getattr(dev, "name", None) == "host" and runner is not None:
            e = on_measured_latency(e, dev, measured_ms or _time_ms(runner, threads))
        n = uncounted_ops(proto, e)
        if n:
            e.method += f"; incomplete: {n} ops not counted"
    return {"energy_mj": round(e.mj, 6), "energy_method": e.method,
            "energy_latency_ms": None if e.latency_ms is None else round(e.latency_ms, 4),
            "macs_by_precision": e.macs_by_precision}


def _time_ms(runner: Any, threads: int) -> float:
    """Median latency of one inference (ms), by the one timer."""
    from edgeslim.measure.latency import interleaved_latency

    return float(interleaved_latency({"model": runner}, seconds=0.5, min_rounds=20, warmup=5,
                                     threads=threads)["model"].p50_ms)


def uncounted_ops(proto: Any, e: Any) -> int:
    """Nodes the estimate could not count: those inside If/Loop/Scan bodies, and MAC layers of unknown shape."""
    from edgeslim.measure.onnx_counts import MAC_OPS
    from edgeslim.onnxkit.graph import graphs

    body = sum(len(g.node) for g in graphs(proto.graph)) - len(proto.graph.node) if has_control_flow(proto) else 0
    return body + sum(1 for r in e.breakdown if r["op"] in MAC_OPS and not r["macs"])


def _unsized_macs(e: Any) -> bool:
    """Some MatMul/Conv/Gemm layer of the estimate has no MACs: its shapes were not known."""
    from edgeslim.measure.onnx_counts import MAC_OPS

    return any(r["op"] in MAC_OPS and not r["macs"] for r in e.breakdown)


def _more_macs(e: Any, retry: Any) -> Any:
    """`retry()`'s estimate when it counts more MACs than `e` (and it does not fail), else `e`."""
    try:
        f = retry()
    except Exception:  # ONNX Runtime cannot fold it: keep the first estimate
        return e
    return f if sum(f.macs_by_precision.values()) > sum(e.macs_by_precision.values()) else e
