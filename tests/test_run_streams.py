"""`run --inputs` on models with recurrent state and several inputs (`run.streams`, `run.onnx_layout`): state
pairs, streams of contiguous blocks, streaming fidelity with the fraction of changed decisions (checked on a
hand-made model), and a GRU model and a two-input model (float + int64 ids + an int64 constant) through
structured pruning, distillation and INT8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from reliability_helpers import main_inproc
from test_run_inputs import FAST  # the same small prune -> distil -> INT8 recipe
from torch import nn

from edgeslim.data.unlabelled import split_blocks
from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds
from edgeslim.run.streams import decisions_changed, probe_layout, state_pairs, stream_fidelity


def _leaky(path: Path, offset: float) -> Path:
    """hn = 0.5 h + x; prob = sigmoid(10 (hn - offset)): a hand-made state model (x, h: [B, 1])."""
    nodes = [helper.make_node("Mul", ["h", "half"], ["hh"]), helper.make_node("Add", ["hh", "input"], ["hn"]),
             helper.make_node("Sub", ["hn", "off"], ["d"]), helper.make_node("Mul", ["d", "ten"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["prob"])]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("half", 0.5), ("off", offset),
                                                                             ("ten", 10.0))]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 1]) for n in ("input", "h", "prob", "hn")]
    g = helper.make_graph(nodes, "leaky", io[:2], io[2:], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_streaming_decisions_changed_by_hand(tmp_path):
    x = np.array([1.0, 0.0, 0.0, 0.0, 0.2, 0.0], np.float32)
    np.savez(tmp_path / "x.npz", input=x[:, None], h=np.zeros((1, 1), np.float32))
    ref, cand = _leaky(tmp_path / "ref.onnx", 0.3), _leaky(tmp_path / "cand.onnx", 0.2)
    specs = input_specs(onnx.load(str(ref)))
    feeds = load_npz_feeds(tmp_path / "x.npz", specs)
    lay = probe_layout(ref, specs, feeds)
    assert lay.states == {"h": "hn"} and not lay.per_sample
    # by hand, state carried: hn = 1, .5, .25, .125, .2625, .13125; ref decides hn > .3, cand hn > .2
    hn = np.array([1, .5, .25, .125, .2625, .13125])
    want = float(((hn > 0.3) != (hn > 0.2)).mean())  # steps 3 and 5 differ: 2 / 6
    assert abs(want - 2 / 6) < 1e-12
    f = stream_fidelity(ref, cand, lay, [feeds], "test")
    assert f["mode"] == "stream" and f["samples"] == 6 and f["streams"] == 1
    assert abs(f["decisions_changed"] - want) < 1e-12
    assert abs(f["per_output"]["prob"]["decisions_changed"] - want) < 1e-12
    assert "decisions_changed" not in f["per_output"]["hn"] or f["per_output"]["hn"]["decisions_changed"] is not None
    # one step from zeros (no state carried) would change only step 5 (x = .2 is not > .2 for cand: none)
    assert float(((x > 0.3) != (x > 0.2)).mean()) != want
    same = stream_fidelity(ref, ref, lay, [feeds[:3], feeds[3:]], "test")
    assert same["decisions_changed"] == 0.0 and same["cosine"] > 0.999999 and same["streams"] == 2
    assert decisions_changed([np.array([0.6]), np.array([0.4])], [np.array([0.5]), np.array([0.4])]) == 0.5


def test_state_pairs_need_same_shape_and_state_names():
    feed = {"audio": np.zeros((1, 64), np.float32), "h": np.zeros((1, 1, 8), np.float32),
            "c": np.zeros((1, 1, 8), np.float32), "state": np.zeros((2, 1, 4), np.float32)}
    outs = {"denoised": np.zeros((1, 64), np.float32), "cn": np.zeros((1, 1, 8), np.float32),
            "hn": np.zeros((1, 1, 8), np.float32), "stateN": np.zeros((2, 1, 4), np.float32)}
    specs = input_specs(helper.make_model(helper.make_graph([], "g", [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in feed.items()], [])))
    assert state_pairs(specs, outs, feed) == {"h": "hn", "c": "cn", "state": "stateN"}  # not audio -> denoised


def test_stream_blocks_are_contiguous_disjoint_and_seeded():
    a, b = split_blocks(100, 3), split_blocks(100, 3)
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))
    every = np.concatenate([np.concatenate(v) for v in a.values()])
    assert sorted(every.tolist()) == list(range(100))
    assert all(np.array_equal(bl, np.arange(bl[0], bl[-1] + 1)) for v in a.values() for bl in v)
    assert len(a["test"]) == 2 and len(a["val"]) == 2 and len(a["train"]) == 6


class Vad(nn.Module):
    """conv front end -> mean over channels -> GRU step (state h [1, B, 16]) -> sigmoid score. (The GRU reads a
    channel mean: a converted GRU fed by a pruned layer's channels does not follow the pruning yet.)"""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(1, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding=1)
        self.gru, self.out = nn.GRU(32, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.c2(torch.relu(self.c1(x[:, None]))))
        o, hn = self.gru(y.mean(1)[None], h)
        return torch.sigmoid(self.out(o[0]) * 4), hn


class TwoIn(nn.Module):
    """a [B, 4, 16] float, b [B, 6] float, ids [B, 3] int64 (per sample), k int64 scalar (a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 16, 3, padding=1), nn.Conv1d(16, 16, 3, padding=1)
        self.fb, self.fc = nn.Linear(6, 16), nn.Linear(16, 5)

    def forward(self, a, b, ids, k):
        y = torch.relu(self.c2(torch.relu(self.c1(a)))).mean(2) + self.fb(b)
        y = y + ids.float().sum(1, keepdim=True) * 0.01 * k.float()
        return torch.softmax(self.fc(y), 1)


def _export(m: nn.Module, args: tuple, path: Path, names: list[str], outs: list[str], axes: dict) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(m.eval(), args, str(path), input_names=names, output_names=outs, dynamic_axes=axes,
                      dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="module")
def vad(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    p = _export(Vad(), (torch.zeros(1, 32), torch.zeros(1, 1, 16)), d / "vad.onnx", ["input", "h"], ["prob", "hn"],
                {"input": {0: "b"}, "h": {1: "b"}, "prob": {0: "b"}, "hn": {1: "b"}})
    t = np.arange(200 * 32) / 800
    x = np.sin(t * 40) * ((t % 1.0) < 0.5) + 0.1 * np.random.default_rng(0).standard_normal(t.size)
    np.savez(d / "vad.npz", input=x.astype(np.float32).reshape(200, 32), h=np.zeros((1, 1, 16), np.float32))
    return p, d / "vad.npz"


def test_gru_model_streams_through_prune_distill_int8(vad, tmp_path):
    model, inputs = vad
    (tmp_path / "r.yaml").write_text(FAST)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(model), "--inputs", str(inputs),
                               "-o", str(out))
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["streams"]["state"] == {"h": "hn"}
    blocks = res["streams"]["blocks"]
    test_steps = {i for a, b in blocks["test"] for i in range(a, b)}
    assert test_steps and not test_steps & {i for a, b in blocks["train"] + blocks["val"] for i in range(a, b)}
    names = [s["name"] for s in res["stages"]]
    assert names == ["baseline", "sensitivity_prune", "distill_outputs", "quantize_int8"]
    assert res["stages"][1]["macs"] < res["stages"][0]["macs"]
    notes = res["stages"][1]["notes"]  # c2's channel group runs through the mean into the GRU and the output Linear
    assert list(notes["not_analysed"]) == ["inner.graph.nodes._c2_Conv.conv"]
    assert "kept whole" in notes["not_analysed"]["inner.graph.nodes._c2_Conv.conv"]
    assert set(notes["allocation"]) == {"inner.graph.nodes._c1_Conv.conv"} and "not_pruned" not in notes
    assert res["stages"][3]["size_bytes"] < res["stages"][2]["size_bytes"]
    specs = input_specs(onnx.load(str(model)))
    feeds = load_npz_feeds(inputs, specs)
    lay = probe_layout(model, specs, feeds)
    for s in res["stages"]:
        f = s["fidelity"]
        assert f["mode"] == "stream" and f["split"] == "test" and f["samples"] == len(test_steps)
        assert f["streams"] == len(blocks["test"]) and s["fidelity_val"]["mode"] == "stream"
        assert s["fidelity_one_step"]["split"] == "test" and 0 <= f["decisions_changed"] <= 1
        assert f["cosine"] > 0.9, (s["name"], f["cosine"])
        # recomputed here, each model over the held-out streams with its own state carried, by hand
        onnx_path = out / s["onnx"]
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        packed = [i.name for i in sess.get_inputs()] == ["packed"]
        assert packed == (s["name"] != "baseline")
        changed = []
        for a, b in blocks["test"]:
            h_r = h_c = np.zeros((1, 1, 16), np.float32)
            for i in range(a, b):
                x = feeds[i]["input"]
                pr, h_r = ref.run(None, {"input": x, "h": h_r})
                feed = {"packed": np.concatenate([x.ravel(), h_c.ravel()])[None]} if packed else {"input": x, "h": h_c}
                pc, h_c = sess.run(None, feed)
                changed.append(bool(pr.ravel()[0] > 0.5) != bool(pc.ravel()[0] > 0.5))
        assert abs(f["decisions_changed"] - float(np.mean(changed))) < 1e-12
    assert lay.states == {"h": "hn"}


def test_two_inputs_int64_ids_and_a_constant_through_prune_distill_int8(tmp_path):
    model = _export(TwoIn(), (torch.zeros(1, 4, 16), torch.zeros(1, 6), torch.zeros(1, 3, dtype=torch.int64),
                              torch.tensor(2)), tmp_path / "two.onnx", ["a", "b", "ids", "k"], ["probs"],
                    {"a": {0: "n"}, "b": {0: "n"}, "ids": {0: "n"}, "probs": {0: "n"}})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", a=rng.normal(size=(150, 4, 16)).astype(np.float32),
             b=rng.normal(size=(150, 6)).astype(np.float32), ids=rng.integers(0, 50, (150, 3)).astype(np.int64),
             k=np.array(2, np.int64))
    (tmp_path / "r.yaml").write_text(FAST)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(model), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(out))
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    spec = json.loads((out / "stages" / "01_sensitivity_prune" / "spec.json").read_text())
    roles = {s["name"]: (s["role"], s["dtype"]) for s in spec["layout"]["slots"]}
    assert roles == {"a": ("data", "<f4"), "b": ("data", "<f4"), "ids": ("data", "<i8"), "k": ("const", "<i8")}
    assert spec["layout"]["slots"][3]["value"] == 2 and spec["input_shape"] == [64 + 6 + 3]
    st = res["stages"]
    assert [s["name"] for s in st] == ["baseline", "sensitivity_prune", "distill_outputs", "quantize_int8"]
    assert st[1]["macs"] < 0.9 * st[0]["macs"] and st[3]["size_bytes"] < st[2]["size_bytes"]
    for s in st:
        assert s["fidelity"]["split"] == "test" and s["fidelity"]["samples"] == 30
        assert s["fidelity"]["cosine"] > 0.95 and s["fidelity"]["top1_agreement"] >= 0.8, (s["name"], s["fidelity"])
    assert "packed" in st[1]["notes"]["interface"] and "k" in st[1]["notes"]["interface"]
    assert {"aligned_convs", "static_shapes_folded", "views_collapsed", "ops_rewritten"} <= set(st[1]["notes"])  # recorded
    assert st[0]["notes"]["conversion_parity_max_abs_diff"]["probs"] < 1e-5


def test_several_inputs_with_a_task_is_one_line_naming_inputs(tmp_path):
    from reliability_helpers import assert_user_error

    model = _leaky(tmp_path / "m.onnx", 0.3)
    (tmp_path / "r.yaml").write_text(FAST)
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(model), "--task", "digits",
                               "-o", str(tmp_path / "run"))
    assert_user_error(code, err, "2 inputs", "--inputs")
    assert not (tmp_path / "run" / "stages").exists()
