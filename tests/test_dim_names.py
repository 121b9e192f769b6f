"""`onnxkit.dim_names` (issue 23): a residual Add after a squeeze-excitation Mul gets symbolic shapes written for
its inputs, ONNX Runtime then fuses it into the NCHWc conv before it (fewer kernels), the outputs stay equal at
several image sizes, and graphs where nothing can be shown equal are left untouched."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.cheap_ops import cheapen_ops
from edgeslim.onnxkit.dim_names import name_dims
from edgeslim.onnxkit.session import session

RNG = np.random.default_rng(0)
C = 16  # a multiple of ONNX Runtime's NCHWc block (8 with AVX2, 16 with AVX-512)


def _conv(name: str, x: str, y: str, co: int, ci: int, k: int = 1) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = (RNG.standard_normal((co, ci, k, k)) * 0.3).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    return (helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], pads=[k // 2] * 4),
            [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])


def _se_residual(dims: list[int | str], broadcast_add: bool = False) -> onnx.ModelProto:
    """x -> conv3x3 (t) -> [GAP -> conv -> Relu -> conv -> HardSigmoid] scale -> Mul -> conv1x1 -> Add(t) -> y.
    `broadcast_add`: the residual adds the [N, C, 1, 1] pooled vector instead (shapes differ: nothing to name)."""
    nodes, inits = [], []
    for spec in (("c0", "x", "t", C, C, 3), ("c1", "p", "q", 4, C), ("c2", "r", "s0", C, 4), ("c3", "m", "u", C, C)):
        n, i = _conv(*spec)  # type: ignore[arg-type]
        nodes.append(n)
        inits += i
    nodes += [helper.make_node("GlobalAveragePool", ["t"], ["p"]), helper.make_node("Relu", ["q"], ["r"]),
              helper.make_node("HardSigmoid", ["s0"], ["s"]), helper.make_node("Mul", ["t", "s"], ["m"]),
              helper.make_node("Add", ["u", "p" if broadcast_add else "t"], ["y"])]
    order = ["c0", "GlobalAveragePool", "c1", "Relu", "c2", "HardSigmoid", "Mul", "c3", "Add"]
    nodes.sort(key=lambda n: order.index(n.op_type if n.op_type != "Conv" else n.input[1][:2]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _ort_ops(m: onnx.ModelProto) -> Counter:
    """Op types of the graph ONNX Runtime runs (ORT_ENABLE_ALL, one thread)."""
    with tempfile.TemporaryDirectory() as td:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.log_severity_level = 1, 3
        o.optimized_model_filepath = str(Path(td) / "o.onnx")
        ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(str(Path(td) / "o.onnx")).graph.node)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(m.SerializeToString(), threads=1).run(None, {"x": x})[0]


def test_residual_add_named_and_fused() -> None:
    m0 = _se_residual(["n", C, "?", "?"])  # a PaddleOCR file's unnamed dims: two '?' must not be taken as one size
    m = onnx.ModelProto()
    m.CopyFrom(m0)
    assert name_dims(m) == 1
    vi = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    assert set(vi) == {"u", "t"} and vi["u"] == vi["t"]
    assert vi["t"][1] == C and all(isinstance(d, str) and d not in ("", "?") for d in (vi["t"][2], vi["t"][3]))
    assert vi["t"][2] != vi["t"][3]  # height and width keep distinct symbols
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in m0.graph.node]  # nodes untouched
    assert [i.type for i in m.graph.input] == [i.type for i in m0.graph.input]  # the input declaration too
    for h, w in ((8, 12), (9, 20), (5, 5)):  # any image size, odd ones included
        x = RNG.standard_normal((2, C, h, w)).astype(np.float32)
        np.testing.assert_allclose(_run(m, x), _run(m0, x), rtol=1e-5, atol=1e-5)
    before, after = _ort_ops(m0), _ort_ops(m)
    if before["ReorderOutput"]:  # ONNX Runtime's NCHWc layout on this CPU (x86 with AVX2 or AVX-512)
        assert before["Add"] == 1 and after["Add"] == 0  # the residual Add fused into the NCHWc conv
        assert sum(after.values()) < sum(before.values())


def test_through_cheapen_ops() -> None:
    m = _se_residual(["n", C, "h", "w"])
    assert cheapen_ops(m, rules=("dim_names",)) == {"dim_names": 1}
    assert len(m.graph.value_info) == 2


def test_untouched_when_nothing_to_name() -> None:
    for m in (_se_residual([1, C, 8, 12]),  # static shapes: ONNX Runtime knows them already
              _se_residual(["n", C, "h", "w"], broadcast_add=True)):  # the Add's inputs differ in shape
        before = m.SerializeToString()
        assert name_dims(m) == 0
        assert m.SerializeToString() == before


def test_untyped_graph_untouched() -> None:
    m = _se_residual(["n", C, "h", "w"])
    m.graph.node[0].op_type = "NoSuchOp"  # the inference cannot type it: the file stays as it is
    before = m.SerializeToString()
    assert name_dims(m) == 0
    assert m.SerializeToString() == before


def test_written_names_never_meet_the_files_own() -> None:
    m = _se_residual(["n", C, "dn0", "dn1"])  # the file already uses the names this module would write
    m.graph.node[0].attribute[0].ints[:] = [0, 0, 0, 0]  # a 3x3 conv without padding: H - 2, W - 2
    assert name_dims(m) == 1
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info]
    assert dims[0] == dims[1] and dims[0][0] == "n"  # the batch keeps the file's own name
    assert all(isinstance(d, str) and d.startswith("_dn") for d in dims[0][2:])  # derived sizes: fresh names
    x = RNG.standard_normal((1, C, 7, 9)).astype(np.float32)
    assert _run(m, x).shape == (1, C, 5, 7)
