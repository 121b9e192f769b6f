"""Graph compilation steps for an exported ONNX model, each reporting what it changed.

- `folded_batchnorm`: Conv followed by BatchNormalization (constant statistics) becomes one Conv
  (W' = W * g / sqrt(v + eps) per output channel, b' = (b - m) * g / sqrt(v + eps) + beta). The
  TorchScript exporter already folds BN of models in eval mode; `bn_folding_check` tells which.
- `fold_and_prune`: constant folding and dead-node removal (onnxscript's optimizer, then
  `onnxkit.graph.remove_dead`: nodes whose outputs nobody reads, unused initializers).
- `compile_ort`: ONNX Runtime offline optimisation at level basic / extended / all, the optimised
  graph saved (`SessionOptions.optimized_model_filepath`), with the fusions that happened listed
  from the operator counts before and after (e.g. Conv + Relu -> com.microsoft.FusedConv) and a
  parity check of the outputs. Level `all` adds layout (NCHWc) transforms specific to this CPU: the
  saved file is for this machine's ONNX Runtime only, and says so; for another device (`--device`) the
  highest level without such kernels is written instead (`compile_onnx`).

Optional backends (OpenVINO, TVM) are probed lazily by `available_backends`; absent ones are skipped
(`measure.latency.openvino_latency` times OpenVINO with the one timer).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.deploy.export import to_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.graph import consumers, op_counts, remove_dead
from edgeslim.onnxkit.load import read_onnx
from edgeslim.onnxkit.ort_options import LEVELS, ort_level
from edgeslim.onnxkit.session import ort_optimize, run_all, session

FUSED_OPS = {
    "FusedConv": "Conv + activation",
    "FusedGemm": "Gemm + activation",
    "FusedMatMul": "MatMul + Transpose/scale",
    "Gemm": "MatMul + Add",
    "QLinearConv": "DequantizeLinear + Conv + QuantizeLinear",
    "QLinearMatMul": "DequantizeLinear + MatMul + QuantizeLinear",
    "QLinearAdd": "DequantizeLinear + Add + QuantizeLinear",
    "QLinearGlobalAveragePool": "DequantizeLinear + GlobalAveragePool + QuantizeLinear",
    "NhwcMaxPool": "MaxPool in NHWC layout",
    "ReorderInput": "NCHWc layout reorder",
    "ReorderOutput": "NCHWc layout reorder",
}


def bn_folding_check(model: str | Path | onnx.ModelProto) -> dict:
    """{"batchnorm_nodes": N, "folded": N == 0, "after_conv": how many follow a Conv (foldable)}."""
    m = read_onnx(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    after_conv = sum(1 for n in bns if n.input[0] in producer and producer[n.input[0]].op_type == "Conv")
    return {"batchnorm_nodes": len(bns), "folded": not bns, "after_conv": after_conv}


def folded_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy with every Conv -> BatchNormalization pair (constant params, single reader) merged."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    readers = {t: len(rs) for t, rs in consumers(g).items()}  # If/Loop bodies' reads included
    producer = {o: n for n in g.node for o in n.output}
    drop: list[onnx.NodeProto] = []
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(bn.input[0], 0) != 1:
            continue
        if not all(t in inits for t in bn.input[1:5]) or conv.input[1] not in inits:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[t]).astype(np.float64) for t in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        w = numpy_helper.to_array(inits[conv.input[1]])
        b = numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else \
            np.zeros(w.shape[0], w.dtype)
        scale = gamma / np.sqrt(var + eps)
        w_new = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        b_new = ((b - mean) * scale + beta).astype(w.dtype)
        wname, bname = conv.input[1] + "_bnfold", (conv.name or conv.output[0]) + "_bias_bnfold"
        g.initializer.extend([numpy_helper.from_array(w_new, wname), numpy_helper.from_array(b_new, bname)])
        del conv.input[1:]
        conv.input.extend([wname, bname])
        conv.output[0] = bn.output[0]
        drop.append(bn)
    for n in drop:
        g.node.remove(n)
    if drop:
        remove_dead(m)
    return m, len(drop)


def fold_and_prune(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Constant folding (onnxscript) + dead-node removal. Returns (model, {nodes_before, nodes_after, ...})."""
    before = len(model.graph.node)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    folded = True
    try:
        from onnxscript import optimizer

        opt = optimizer.optimize(m, num_iterations=2, inline=True)
        # it can write attributes newer than the model's opset (Reshape allowzero into opset 12): check
        onnx.checker.check_model(opt)
        m = opt
    except Exception:  # the optimizer rejects (or breaks) some graphs; keep the model as is then
        folded = False
        m.CopyFrom(model)
    dead = remove_dead(m)
    return m, {"nodes_before": before, "nodes_after": len(m.graph.node), "constant_folding": folded,
               "dead_nodes_removed": dead}


@dataclass
class CompileReport:
    level: str
    path: str  # the saved optimised model
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    fusions: list[str] = field(default_factory=list)
    batchnorm: dict = field(default_factory=dict)
    parity_max_abs_diff: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def describe_fusions(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Human lines for op types that appeared (fused kernels) or shrank/vanished (absorbed)."""
    lines = []
    for op, n in sorted(after.items()):
        gained = n - before.get(op, 0)
        if gained > 0:
            short = op.split(".")[-1]
            lines.append(f"{op} x{gained}" + (f" ({FUSED_OPS[short]})" if short in FUSED_OPS else ""))
    for op, n in sorted(before.items()):
        lost = n - after.get(op, 0)
        if lost > 0:
            lines.append(f"{op} -{lost} (absorbed or removed)")
    return lines


def compile_ort(model_path: str | Path, out_path: str | Path, level: str = "extended",
                feeds: Sequence[dict[str, np.ndarray]] | None = None, reference: str | Path | None = None,
                atol: float = 1e-4) -> CompileReport:
    """Optimise with ONNX Runtime at `level`, save to `out_path`, list fusions, and check that every output
    still matches `reference` (default: the input model) on `feeds` (default: synthetic feeds from the
    declared shapes; `[]` skips the check). Parity is the max abs difference. The file is written only once
    checked: a refused model leaves `out_path` as it was."""
    ort_level(level)  # an unknown level is the user's mistake: one line with the valid ones
    src = read_onnx(model_path)
    try:
        opt = ort_optimize(model_path, level)
    except Exception as e:  # ORT raises private exception types
        raise EdgeslimError(f"{model_path}: ONNX Runtime could not optimise it ({str(e).splitlines()[0]})") from None
    out_path = Path(out_path)
    data = opt.SerializeToString()
    before, after = op_counts(src, qualified=True), op_counts(opt, qualified=True)
    rep = CompileReport(
        level=level, path=str(out_path), nodes_before=len(src.graph.node), nodes_after=len(opt.graph.node),
        ops_before=before, ops_after=after, fusions=describe_fusions(before, after), batchnorm=bn_folding_check(src),
    )
    if feeds is None:  # synthetic inputs from the declared shapes, when they are all known
        from edgeslim.onnxkit.inputs import input_specs, make_feeds

        try:
            feeds = make_feeds(input_specs(src), n=1).feeds
        except EdgeslimError:
            feeds = []
    if feeds:
        ref = run_all(session(reference or model_path, level="disable"), feeds, str(reference or model_path))
        got = run_all(session(data, level="disable"), feeds, str(out_path))
        diff, scale = 0.0, 1.0
        for a_out, b_out in zip(ref, got):
            for a, b in zip(a_out, b_out):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                if a.size:
                    diff = max(diff, float(np.abs(a - b).max()))
                    scale = max(scale, float(np.abs(a).max()))
        rep.parity_max_abs_diff = diff
        if not np.isfinite(diff) or diff > atol * scale:
            raise EdgeslimError(f"{model_path}: level '{level}' changed outputs by {diff:.3g}")
    write_bytes(out_path, data)
    return rep


def host_specific_ops(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Operators compilation added that only ONNX Runtime runs, some only on this kind of CPU: contrib kernels
    (`com.microsoft.FusedConv`, ...) and NCHWc layouts (`com.microsoft.nchwc.*`). Names qualified (`op_counts`)."""
    return sorted(op for op, n in after.items() if op.startswith("com.microsoft") and n > before.get(op, 0))


def compile_onnx(model: Path, out: Path, level: str = "extended", inputs: Path | None = None,
                  shapes: Sequence[str] = (), device: str | Path | None = None) -> dict:
    """The `edgeslim compile` job on an ONNX file or model folder: `folded_batchnorm`, `fold_and_prune`, then
    `compile_ort` into `out`, every output checked against the input model on its inputs (`inputs` .npz, else
    synthetic, `shapes` for symbolic dims). Returns the report; ORT's node counts are `nodes_before`/
    `nodes_after`, the folding step's `fold_nodes_before`/`fold_nodes_after`.

    For a `device` that is not this host (`devices.timed_here`) the file handed over never holds
    host-specific kernels or layouts (`host_specific_ops`): the highest level up to `level` without them is
    written and `device_note` says so. Otherwise a file with them says it is for this CPU (`for_this_cpu`)."""
    from edgeslim.devices import load_device, timed_here
    from edgeslim.onnxkit.inputs import input_specs, make_feeds
    from edgeslim.untrusted import about

    ort_level(level)
    dev = load_device(device) if device is not None else None
    portable = dev is not None and not timed_here(dev)
    note = None
    path, cleanup = to_onnx(model)
    try:
        with about(model), tempfile.TemporaryDirectory() as tmp:  # a broken model: one line naming it
            src = read_onnx(path)
            fd = make_feeds(input_specs(src), inputs, shapes, n=2)
            m, n_bn = folded_batchnorm(src)
            m, info = fold_and_prune(m)
            pre = Path(tmp) / "pre.onnx"
            write_bytes(pre, m.SerializeToString())
            for lvl in reversed(LEVELS[: LEVELS.index(level) + 1]):
                rep = compile_ort(pre, Path(tmp) / f"{lvl}.onnx", lvl, feeds=fd.feeds, reference=path)
                host_ops = host_specific_ops(rep.ops_before, rep.ops_after)
                if not (portable and host_ops):
                    break
                assert dev is not None
                note = (f"level '{level}' writes ONNX Runtime kernels for this CPU ({', '.join(host_ops)}) that "
                        f"{dev.name} does not run: wrote level '{LEVELS[LEVELS.index(lvl) - 1]}' instead")
            write_bytes(out, Path(rep.path).read_bytes())
            rep.path = str(out)
    finally:
        if cleanup:
            cleanup()
    res = {"batchnorm_folded_here": n_bn, **info, **rep.as_dict(), "fold_nodes_before": info["nodes_before"],
           "fold_nodes_after": info["nodes_after"], "inputs": {k: list(v.shape) for k, v in fd.feeds[0].items()},
           "input_source": fd.source, "warnings": fd.warnings}
    if note:
        res["device_note"] = note
    if host_ops and not portable:
        res["for_this_cpu"] = (f"{out} is for this CPU: its {', '.join(host_ops)} run only in ONNX Runtime on a "
                               "CPU like this one (pass --device for another target, or --level basic)")
    return res


def available_backends() -> dict[str, bool]:
    """Which optional compilers are importable (extras `edgeslim[openvino]`, TVM installed by hand)."""
    return {"onnxruntime": True, "openvino": importlib.util.find_spec("openvino") is not None,
            "tvm": importlib.util.find_spec("tvm") is not None}
