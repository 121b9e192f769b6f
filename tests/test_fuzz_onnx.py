"""Fuzzed ONNX files (truncated, bit-flipped, structurally mutated) through `measure`, `fit`, `arena`,
`compile` and `optimize`: each ends with a result or one EdgeslimError line naming the file; never
another exception, never a hang, and a refused command writes nothing."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_helpers import assert_one_line_error, main_inproc, one_line

from edgeslim import api, models
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError

_COUNTER = itertools.count()


class Good:
    """A tiny valid model (Conv, Relu, MaxPool, Gemm) in a folder (a class: hypothesis prints no bytes)."""

    def __init__(self, root: Path):
        self.root = root
        self.raw = (root / "good.onnx").read_bytes()

    def __repr__(self) -> str:
        return f"Good({self.root})"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    torch.manual_seed(0)
    net = models.build_model(models.make_spec("lenet5", (1, 8, 8), 4))
    root = tmp_path_factory.mktemp("fuzz_onnx")
    export_onnx(net, (1, 8, 8), root / "good.onnx")
    return Good(root)


def _write(root: Path, data: bytes) -> Path:
    p = root / f"m{next(_COUNTER)}.onnx"
    p.write_bytes(data)
    return p


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncated, bit-flipped or partly overwritten copies of `data`."""
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "overwrite", "random"]))
    b = bytearray(data)
    if kind == "truncate":
        return bytes(b[: draw(st.integers(0, len(b) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if kind == "overwrite":
        i = draw(st.integers(0, len(b) - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        b[i : i + len(chunk)] = chunk
        return bytes(b)
    return draw(st.binary(max_size=300))


@st.composite
def mutated_graph(draw: st.DrawFn, data: bytes) -> bytes:
    """The model parsed and changed where real exports go wrong: dims, op types, dropped nodes or
    initializers, dtypes, opsets, names."""
    m = onnx.load_from_string(data)
    g = m.graph
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dim", "op", "drop_node", "drop_init", "dtype", "opset", "rename", "attr"]))
        if kind == "dim":
            vi = draw(st.sampled_from(list(g.input) + list(g.output)))
            dims = vi.type.tensor_type.shape.dim
            if len(dims):
                d = dims[draw(st.integers(0, len(dims) - 1))]
                d.dim_value = draw(st.sampled_from([0, 1, 3, 7, 10**5]))
        elif kind == "op" and len(g.node):
            g.node[draw(st.integers(0, len(g.node) - 1))].op_type = draw(
                st.sampled_from(["Conv", "Relu", "NoSuchOp", "MaxPool", "Gemm", "Add", ""]))
        elif kind == "drop_node" and len(g.node) > 1:
            del g.node[draw(st.integers(0, len(g.node) - 1))]
        elif kind == "drop_init" and len(g.initializer):
            del g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        elif kind == "dtype" and len(g.initializer):
            g.initializer[draw(st.integers(0, len(g.initializer) - 1))].data_type = draw(
                st.sampled_from([0, 2, 6, 7, 10, 16, 99]))
        elif kind == "opset":
            m.opset_import[0].version = draw(st.sampled_from([1, 7, 11, 13, 21, 99]))
        elif kind == "rename" and len(g.node):
            n = g.node[draw(st.integers(0, len(g.node) - 1))]
            if len(n.input):
                n.input[0] = draw(st.sampled_from(["", "missing", g.input[0].name]))
        elif kind == "attr" and len(g.node):
            n = g.node[draw(st.integers(0, len(g.node) - 1))]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.INTS and len(a.ints):
                    a.ints[0] = draw(st.sampled_from([0, -1, 9, 10**6]))
                elif a.type == onnx.AttributeProto.INT:
                    a.i = draw(st.sampled_from([0, -1, 9, 10**6]))
    return m.SerializeToString()


def _entry_points(p: Path, out_dir: Path) -> None:
    """Every ONNX-reading job edgeslim has, on `p`: each returns or raises a one-line EdgeslimError that
    names the file."""
    jobs = {
        "measure": lambda: api.measure([p], runs=3),
        "fit": lambda: api.check_fit(p, "cortex-m4"),
        "arena": lambda: api.plan_arena(p),
    }
    for name, job in jobs.items():
        t0 = time.perf_counter()
        try:
            job()
        except EdgeslimError as e:
            assert_one_line_error(e, p.name)
        assert time.perf_counter() - t0 < 120, f"{name} hung"  # generous: a shared, loaded 2-core VM
    out = out_dir / f"{p.stem}.compiled.onnx"
    code, _, err = main_inproc("compile", str(p), "-o", str(out))
    assert code in (0, 1), err
    if code == 1:
        assert p.name in one_line(err)
        assert not out.exists()  # a refused compile writes nothing


@settings(max_examples=60)
@given(st.data())
def test_corrupted_onnx_files(good: Good, data: st.DataObject) -> None:
    root, raw = good.root, good.raw
    p = _write(root, data.draw(corrupted(raw)))
    _entry_points(p, root)


@settings(max_examples=60)
@given(st.data())
def test_structurally_mutated_onnx_models(good: Good, data: st.DataObject) -> None:
    root, raw = good.root, good.raw
    p = _write(root, data.draw(mutated_graph(raw)))
    _entry_points(p, root)


@settings(max_examples=16)
@given(st.data())
def test_optimize_on_broken_models(good: Good, data: st.DataObject) -> None:
    """`optimize_onnx` (repair, candidates, fidelity, timing) on corrupt and mutated models."""
    from edgeslim.onnxopt.run import OptimizeConfig, optimize_onnx

    root, raw = good.root, good.raw
    broken = data.draw(st.one_of(corrupted(raw), mutated_graph(raw)))
    p = _write(root, broken)
    out = root / f"{p.stem}.opt.onnx"
    cfg = OptimizeConfig(model=p, out=out, samples=4, bench_seconds=0.2, candidates=("fp32-opt", "w8", "int8-qdq"))
    try:
        optimize_onnx(cfg)
    except EdgeslimError as e:
        assert_one_line_error(e, p.name)
        assert not out.exists()


def test_corrupt_onnx_through_the_cli_names_the_file(good: Good, tmp_path: Path) -> None:
    raw = good.raw
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(raw[: len(raw) // 2])
    save = tmp_path / "m.json"
    for args in (["measure", str(bad), "--save", str(save)], ["fit", str(bad)], ["arena", str(bad)],
                 ["compile", str(bad), "-o", str(tmp_path / "c.onnx")],
                 ["optimize", str(bad), "-o", str(tmp_path / "o.onnx")]):
        code, _, err = main_inproc(*args)
        assert code == 1, (args, err)
        assert "truncated.onnx" in one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.onnx"]  # nothing written


def test_random_weights_still_measure(good: Good, tmp_path: Path) -> None:
    """A bit flip that only changes a weight leaves a valid model: it must measure, not be refused."""
    raw = good.raw
    m = onnx.load_from_string(raw)
    w = m.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] = np.nan
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    p = tmp_path / "nan_weight.onnx"
    p.write_bytes(m.SerializeToString())
    row = api.measure([p], runs=3)[0]
    assert row["size_bytes"] > 0 and row["latency_ms_p50"] > 0
