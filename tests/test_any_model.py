"""Every model command on every kind of model users bring (tests/model_cases.py), through the CLI: exit 0 and
the fields each command promises; plus the one-line errors for symbolic dims and bad --inputs files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_cases import CASES
from typer.testing import CliRunner

from edgeslim.cli import app
from edgeslim.errors import EdgeslimError

COMMANDS = ("measure", "fit", "arena", "compile", "optimize", "export")


def _args(cmd: str, model: Path, tmp: Path) -> list[str]:
    return {
        "measure": ["measure", str(model), "--runs", "5", "--quick"],
        "fit": ["fit", str(model)],
        "arena": ["arena", str(model)],
        "compile": ["compile", str(model), "-o", str(tmp / "compiled.onnx")],
        "optimize": ["optimize", str(model), "-o", str(tmp / "optimised.onnx"), "--samples", "2", "--bench-seconds",
                     "0.05", "--candidates", "fp32-opt,w8,int8-qdq", "--max-slowdown", "10"],
        "export": ["export", str(model), "--format", "onnx", "-o", str(tmp / "exported.onnx")],
    }[cmd]


def _check(cmd: str, d: dict | list, tmp: Path) -> None:
    if cmd == "measure":
        assert isinstance(d, list)
        r = d[0]
        assert r["accuracy"] is None and "accuracy_samples" not in r  # no task: no accuracy
        assert r["latency_ms_p50"] > 0 and r["latency_runs"] >= 5 and r["size_bytes"] > 0 and r["params"] > 0
        assert r["deploy_device"] == "cortex-m4" and isinstance(r["fits"], bool) and r["flash_bytes"] > r["weights_bytes"]
        assert r["energy_method"].startswith(("estimated:calibrated@cortex-m4 (LOO error", "measured:"))
        assert r["inputs"] and r["input_source"] in ("declared", "shape")
    elif cmd == "fit":
        assert isinstance(d, dict)
        assert d["device"] == "cortex-m4" and d["weights_bytes"] > 0 and d["flash_bytes"] > d["weights_bytes"]
        assert {"fits", "fits_flash", "fits_ram", "ram_bytes", "arena_source", "energy_mj"} <= set(d)
    elif cmd == "arena":
        assert isinstance(d, dict)
        assert d["arena_bytes"] > 0 and d["naive_bytes"] >= d["arena_bytes"] and d["fit"]["device"] == "cortex-m4"
    elif cmd == "compile":
        assert isinstance(d, dict)
        assert d["parity_max_abs_diff"] < 1e-3 and (tmp / "compiled.onnx").is_file() and d["fit"]["device"] == "cortex-m4"
    elif cmd == "optimize":
        assert isinstance(d, dict)
        assert (tmp / "optimised.onnx").is_file() and d["chosen"] and d["device"] == "cortex-m4"
    else:
        assert isinstance(d, dict)
        assert d["parity_max_abs_diff"] == 0.0 and (tmp / "exported.onnx").is_file() and d["fit"]["device"] == "cortex-m4"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_command_on_every_case(case: str, tmp_path: Path) -> None:
    model, opts = CASES[case](tmp_path)
    for cmd in COMMANDS:
        r = CliRunner().invoke(app, [*_args(cmd, model, tmp_path), *opts, "--device", "cortex-m4", "--json"])
        assert r.exit_code == 0, f"{case} {cmd}: {r.exception!r} {r.output[-500:]}"
        _check(cmd, json.loads(r.output), tmp_path)


def test_fixed_batch_is_respected_and_if_arena_is_a_lower_bound(tmp_path: Path) -> None:
    from edgeslim.measure.core import measure_model

    fixed, _ = CASES["fixed_batch"](tmp_path)
    m = measure_model(fixed, runs=5, batch=4).as_dict()
    assert m["inputs"] == {"x": "float32[1, 8, 32, 32]"} and m["latency_batch"] == 1 and m["accuracy"] is None
    assert "latency_b4_ms_p50" not in m and any("fixed batch" in w for w in m["warnings"])
    assert m["macs"] == 32 * 32 * 8 * 8 * 9 + 8 * 10  # conv + fc, from the graph
    ifm, _ = CASES["if_subgraph"](tmp_path)
    m = measure_model(ifm, runs=5, device="cortex-m4").as_dict()
    assert m["arena_lower_bound"] and "If/Loop/Scan" in m["arena_note"]
    assert m["weights_bytes"] == 2 * 32 * 32 * 4 + 4  # both branches' Constant weights + the scalar
    assert m["energy_method"].endswith("; incomplete: 4 ops not counted")  # the If bodies


def test_synthetic_values_follow_dtype_and_name(tmp_path: Path) -> None:
    from edgeslim.measure.core import measure_model

    tok, _ = CASES["tokens_state"](tmp_path)
    m = measure_model(tok, runs=5, batch=3).as_dict()
    assert m["inputs"] == {"ids": "int64[1, 8]", "state": "float32[1, 1, 16]"}  # B bound by the ids' batch
    assert any("token ids" in w for w in m["warnings"]) and any("'state' (state) starts from zeros" in w
                                                                 for w in m["warnings"])
    sc, _ = CASES["scalar"](tmp_path)
    m = measure_model(sc, runs=5).as_dict()
    assert m["inputs"]["sr"] == "int64[]" and any("16000" in w for w in m["warnings"])


def test_fidelity_against_a_reference(tmp_path: Path) -> None:
    import onnx

    from edgeslim.measure.core import measure_model

    multi, _ = CASES["several_outputs"](tmp_path)
    m = measure_model(multi, runs=5, reference=multi).as_dict()
    assert m["fidelity"]["cosine"] == pytest.approx(1.0) and m["fidelity"]["max_abs_err"] == 0.0
    assert m["fidelity"]["top1_agreement"] == 1.0 and set(m["fidelity"]["per_output"]) == {"scores", "emb", "norm"}
    model = onnx.load(str(multi))  # the same graph with the last layer's weights perturbed
    w = onnx.numpy_helper.to_array(model.graph.initializer[1]) + 0.05
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(w, model.graph.initializer[1].name))
    onnx.save(model, str(tmp_path / "changed.onnx"))
    f = measure_model(tmp_path / "changed.onnx", runs=5, reference=multi).as_dict()["fidelity"]
    assert f["per_output"]["emb"]["max_abs_err"] == 0.0 and f["per_output"]["scores"]["max_abs_err"] > 0


def _one_line_error(args: list[str], *want: str) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and isinstance(r.exception, EdgeslimError), (r.exception, r.output)
    msg = str(r.exception)
    assert "\n" not in msg and all(w in msg for w in want), msg


@pytest.mark.parametrize("cmd", COMMANDS)
def test_symbolic_dim_without_inputs_names_input_dim_and_option(cmd: str, tmp_path: Path) -> None:
    model, _ = CASES["symbolic"](tmp_path)
    _one_line_error(_args(cmd, model, tmp_path), "input 'x'", "symbolic dimension 'H'", "--inputs", "--shape x=")
    assert not any((tmp_path / f).exists() for f in ("compiled.onnx", "optimised.onnx", "exported.onnx"))


@pytest.mark.parametrize("cmd", COMMANDS)
def test_bad_inputs_file_is_one_line(cmd: str, tmp_path: Path) -> None:
    model, _ = CASES["tokens_state"](tmp_path)
    ids, state = np.ones((2, 8), np.int64), np.zeros((1, 2, 16), np.float32)
    np.savez(tmp_path / "missing.npz", ids=ids)
    _one_line_error([*_args(cmd, model, tmp_path), "--inputs", str(tmp_path / "missing.npz")], "missing state")
    np.savez(tmp_path / "dtype.npz", ids=ids.astype(np.float32), state=state)
    _one_line_error([*_args(cmd, model, tmp_path), "--inputs", str(tmp_path / "dtype.npz")], "'ids' is float",
                    "int64")
    np.savez(tmp_path / "shape.npz", ids=np.ones((2, 7), np.int64), state=state)
    _one_line_error([*_args(cmd, model, tmp_path), "--inputs", str(tmp_path / "shape.npz")], "array 'ids'",
                    "expects [B, 8]")


def test_inputs_file_drives_every_command(tmp_path: Path) -> None:
    model, _ = CASES["symbolic"](tmp_path)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((3, 1, 3, 12, 20), dtype=np.float32))
    for cmd in COMMANDS:
        r = CliRunner().invoke(app, [*_args(cmd, model, tmp_path), "--inputs", str(tmp_path / "x.npz"), "--json"])
        assert r.exit_code == 0, f"{cmd}: {r.exception!r}"
        d = json.loads(r.output)
        if cmd == "measure":
            assert d[0]["inputs"] == {"x": "float32[1, 3, 12, 20]"} and d[0]["input_source"] == "inputs"
        if cmd == "arena":  # 12x20 feature maps: input 3 ch + conv out 4 ch, float32, 16-byte aligned
            assert d["naive_bytes"] == (3 + 4) * 12 * 20 * 4


def test_export_takes_the_shared_options(tmp_path: Path, tiny_image_task) -> None:
    from conftest import trained

    trained("lenet5", tiny_image_task, 1, tmp_path / "m")
    np.savez(tmp_path / "x.npz", input=tiny_image_task.x_test[:8])
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "--format", "onnx", "-o", str(out), "--inputs",
                                 str(tmp_path / "x.npz"), "--shape", "input=1,1,8,8", "--device", "cortex-m4",
                                 "--json"])
    assert r.exit_code == 0, repr(r.exception)
    d = json.loads(r.output)
    assert d["parity_max_abs_diff"] < 1e-3 and d["fit"]["device"] == "cortex-m4" and d["fit"]["fits"]
    r = CliRunner().invoke(app, ["export", str(out), "--format", "onnx", "-o", str(tmp_path / "again.onnx"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["parity_max_abs_diff"] == 0.0
    _one_line_error(["export", str(out), "--format", "tflite", "-o", str(tmp_path / "m.tflite")], "not from ONNX")
    np.savez(tmp_path / "bad.npz", input=np.zeros((4, 1, 7, 8), np.float32))
    _one_line_error(["export", str(tmp_path / "m"), "--format", "onnx", "-o", str(tmp_path / "b.onnx"), "--inputs",
                     str(tmp_path / "bad.npz")], "bad.npz", "[1, 8, 8]")


def test_several_models_are_timed_together(tmp_path: Path) -> None:
    multi, _ = CASES["several_outputs"](tmp_path)
    fmap, _ = CASES["feature_map"](tmp_path)
    r = CliRunner().invoke(app, ["measure", str(multi), str(fmap), "--runs", "20", "--quick", "--json"])
    assert r.exit_code == 0, repr(r.exception)
    rows = json.loads(r.output)
    for row in rows:  # the comparison is one interleaved loop; each model's own timing is kept beside it
        assert row["latency_timing"] == "interleaved: 2 models in one loop"
        assert row["latency_ms_p50"] > 0 and row["latency_ms_p50_alone"] > 0 and row["latency_runs"] == 20


def test_energy_counts_macs_behind_shape_computed_reshapes(tmp_path: Path) -> None:
    """Transformer exports size their Reshapes from `Shape` ops (heads split as BERT exports do): the MACs
    after them count in the graph figures and in the energy estimate (test_nlp_encoder checks a real
    exported BERT, where only the folded graph has the shapes)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.measure.core import measure_model

    inits = [numpy_helper.from_array(np.ones((4, 16), np.float32), "W"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "heads")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),  # as BERT exports split heads: (B, S, 8) -> (B, S, 2, 4)
             helper.make_node("Gather", ["s", "one"], ["seq"], axis=0),
             helper.make_node("Concat", ["one", "seq", "heads"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("MatMul", ["r", "W"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", 2, 16])], inits)
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    m = measure_model(path, shapes=["x=1,32,8"], device="cortex-a72", latency=False)
    assert m.macs == 32 * 2 * 4 * 16
    assert m.energy["macs_by_precision"] == {"fp32": 32 * 2 * 4 * 16} and m.energy["energy_latency_ms"] > 0
