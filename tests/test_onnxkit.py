"""The shared ONNX toolkit: the one SQNR, the one calibration reader, subgraph-aware walks and dead-node
removal, op counts, the optimisation-level table and ONNX Runtime's offline optimisation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_optimize_graphs import if_model

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.graph import all_nodes, graphs, has_qdq, op_counts, remove_dead, with_outputs
from edgeslim.onnxkit.ort_options import ort_level
from edgeslim.onnxkit.quant import SQNR_IDENTICAL_DB, FeedReader, array_feeds, sqnr_db, sqnr_from_sums
from edgeslim.onnxkit.session import onnx_accuracy, ort_optimize, session


def test_sqnr_known_value_and_identical_outputs():
    ref = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    got = ref + np.array([0.1, -0.1, 0.1, -0.1], np.float32)  # noise power 1 % of the signal: 20 dB
    assert sqnr_db(ref, got) == pytest.approx(20.0, abs=1e-5)
    assert sqnr_from_sums(4.0, 0.04) == pytest.approx(20.0)
    # identical outputs: a finite ceiling (200 dB), not inf, so quantization reports stay valid JSON
    assert sqnr_db(ref, ref.copy()) == SQNR_IDENTICAL_DB == 200.0
    assert json.loads(json.dumps({"sqnr_db": sqnr_db(ref, ref)}))["sqnr_db"] == 200.0
    # any real error is below the ceiling, however small
    assert sqnr_db(ref, np.nextafter(ref, 2).astype(np.float32)) < SQNR_IDENTICAL_DB


def test_one_calibration_reader_over_array_batches():
    x = np.arange(40, dtype=np.float64).reshape(40, 1)
    feeds = array_feeds("input", x, batch=16)
    assert [f["input"].shape[0] for f in feeds] == [16, 16, 8]
    assert all(f["input"].dtype == np.float32 for f in feeds)
    r = FeedReader(feeds)
    got = []
    while (f := r.get_next()) is not None:
        got.append(f)
    assert len(got) == 3 and r.get_next() is None
    r.rewind()
    assert r.get_next() is feeds[0]


def _dead_with_subgraph_reader() -> onnx.ModelProto:
    """`w2` is produced in the main graph and read only inside the If's then-branch; `junk` is read nowhere."""
    f = TensorProto.FLOAT
    branch = helper.make_graph([helper.make_node("Add", ["x", "w2"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", f, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", f, [2])])
    nodes = [
        helper.make_node("Neg", ["w"], ["w2"], name="neg"),
        helper.make_node("Abs", ["x"], ["junk"], name="junk"),
        helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other, name="if"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [2]),
                                       helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", f, [2])],
                          [numpy_helper.from_array(np.ones(2, np.float32), "w"),
                           numpy_helper.from_array(np.ones(2, np.float32), "unused")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_remove_dead_keeps_what_subgraphs_read():
    m = _dead_with_subgraph_reader()
    assert remove_dead(m) == 1
    assert [n.name for n in m.graph.node] == ["neg", "if"]  # `neg` feeds the then-branch: kept
    assert [t.name for t in m.graph.initializer] == ["w"]
    onnx.checker.check_model(m)


def test_walks_and_op_counts_include_subgraphs(tmp_path):
    m = onnx.load(str(if_model(tmp_path / "if.onnx")))
    assert len(list(graphs(m.graph))) == 3
    assert sum(n.op_type == "MatMul" for n in all_nodes(m.graph)) == 2
    counts = op_counts(m)
    assert counts["MatMul"] == 2 and counts["If"] == 1
    assert list(counts) == sorted(counts, key=lambda k: (-counts[k], k))  # most frequent first
    assert not has_qdq(m)
    extra = with_outputs(m, ["z", "z"])
    assert [o.name for o in extra.graph.output] == ["out", "z"] and len(m.graph.output) == 1


def test_qualified_op_counts_name_contrib_domains(tmp_path):
    m = onnx.load(str(if_model(tmp_path / "if.onnx")))
    m.graph.node[1].domain = "com.microsoft"
    assert "com.microsoft.Relu" in op_counts(m, qualified=True) and "Relu" in op_counts(m)


def test_level_table_and_offline_optimisation(tmp_path):
    with pytest.raises(EdgeslimError, match="unknown optimisation level 'fast'; valid: all, basic, disable, extended"):
        ort_level("fast")
    m = _dead_with_subgraph_reader()
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    x = {"x": np.array([1.0, 2.0], np.float32), "c": np.array(True)}
    for src in (m, path):  # an in-memory model or a file
        opt = ort_optimize(src, "basic")
        got = session(opt.SerializeToString(), level="disable").run(None, x)[0]
        assert np.allclose(got, [0.0, 1.0])
    with pytest.raises(EdgeslimError, match="in-memory model.*cannot load"):
        session(b"not a model")


def test_sort_topologically_puts_an_if_after_what_its_body_reads(tmp_path) -> None:
    """A quantizer left `scaled` after the `If` whose branch reads it (silero-vad op15 after int8-qdq+w8):
    ONNX Runtime runs it, the ONNX checker (and so `edgeslim measure`) refuses it. `save` sorts."""
    from edgeslim.onnxkit.graph import save, sort_topologically

    then = helper.make_graph([helper.make_node("Identity", ["scaled"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Mul", ["x", "two"], ["scaled"])]  # produced after the If that reads it
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                       helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m)
    raw = tmp_path / "raw.onnx"  # as a peer's quantizer wrote it: the measurement core still takes it
    raw.write_bytes(m.SerializeToString())
    from edgeslim.measure.core import measure_model

    got = measure_model(raw, latency=False)
    assert got.size_bytes == raw.stat().st_size
    path = tmp_path / "m.onnx"
    save(m, path)
    fixed = onnx.load(str(path))
    onnx.checker.check_model(fixed)
    assert [n.op_type for n in fixed.graph.node] == ["Mul", "If"]
    assert not sort_topologically(fixed.graph)  # sorted stays as it is


def _linear_classifier(path, batch: int | str) -> np.ndarray:
    """A [batch, 4] -> [batch, 3] MatMul classifier saved to `path`; returns its weight."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 3])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def test_one_onnx_accuracy_for_fixed_and_free_batches(tmp_path):
    """The one accuracy of an ONNX model: a model with a fixed batch of 8 is fed 8 samples a run (the last of
    the 19 padded), and scores exactly what the free-batch model scores; labels, cosine and scores kept."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((19, 4)).astype(np.float32)
    w = _linear_classifier(tmp_path / "fixed.onnx", 8)
    _linear_classifier(tmp_path / "free.onnx", "N")
    y = (x @ w).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # 5 of 19 wrong
    kept: list[np.ndarray] = []
    for name in ("fixed", "free"):
        assert onnx_accuracy(tmp_path / f"{name}.onnx", x, y, scores=kept) == pytest.approx(14 / 19)
        assert onnx_accuracy(tmp_path / f"{name}.onnx", x, (x @ w).astype(np.float32)) == pytest.approx(1.0)
    assert kept[0].shape == (19, 3) and np.allclose(kept[0], kept[1], atol=1e-5)
    with pytest.raises(EdgeslimError, match="scores 3 classes but the task has 5"):
        onnx_accuracy(session(tmp_path / "free.onnx"), x, y, num_classes=5, where="m.onnx")


def test_session_options_are_built_in_one_place():
    """Every ONNX Runtime session takes its options from `onnxkit.ort_options.session_options`, the RSS
    child process of `measure.memory` included: no other module builds `SessionOptions`."""
    import pathlib

    import edgeslim

    root = pathlib.Path(edgeslim.__file__).parent
    builders = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "SessionOptions()" in p.read_text())
    assert builders == ["onnxkit/ort_options.py"]
    from edgeslim.measure import memory

    assert memory._ORT_OPTIONS == str(root / "onnxkit" / "ort_options.py") and "opts.session_options(threads)" in memory._CHILD
