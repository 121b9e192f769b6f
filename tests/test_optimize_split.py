"""`optimize_onnx` splits the given samples once (seeded): the INT8 plan calibrates on one part, every candidate's
fidelity and the tolerance gate use the other, which no quantizer saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_optimize_graphs import multi_input_mlp

from edgeslim.onnxopt import candidates
from edgeslim.onnxopt.run import MAX_HELD_OUT, OptimizeConfig, optimize_onnx, split_samples
from edgeslim.quant.int8_plan import Int8Options


def test_split_is_seeded_disjoint_and_uses_every_sample() -> None:
    s = split_samples(128, 32, seed=0)
    assert (len(s.calibration), len(s.held_out)) == (32, 96)  # 128 windows: 32 calibrate, 96 judge
    assert not set(s.calibration) & set(s.held_out) and sorted(s.calibration + s.held_out) == list(range(128))
    assert split_samples(128, 32, seed=0) == s and split_samples(128, 32, seed=1).calibration != s.calibration
    t = split_samples(32, 32, seed=0)  # at least a quarter is held out
    assert (len(t.calibration), len(t.held_out)) == (24, 8)
    big = split_samples(2000, 32, seed=0)
    assert len(big.held_out) == MAX_HELD_OUT and "not used" in big.note
    one = split_samples(1, 32, seed=0)
    assert one.calibration == one.held_out == [0] and "only 1 sample" in one.note


def test_fidelity_comes_from_samples_never_calibrated_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    n = 20
    a = np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)
    a[:, 0] = np.arange(n)  # sample i carries its index in a[0]
    np.savez(tmp_path / "in.npz", a=a, b=np.ones((n, 16), np.float32))
    ids = lambda feeds: sorted(int(round(float(f["a"].ravel()[0]))) for f in feeds)  # noqa: E731
    seen: dict[str, list] = {"calibration": [], "fidelity": []}
    build, iter_outputs = candidates.int8_plan.build_plan, candidates.iter_outputs

    def spy_build(model, feeds, ref, opts, clock):  # type: ignore[no-untyped-def]
        seen["calibration"].append(ids(feeds))
        return build(model, feeds, ref, opts, clock)

    def spy_outputs(sess, feeds):  # type: ignore[no-untyped-def]
        seen["fidelity"].append(ids(feeds))
        return iter_outputs(sess, feeds)

    monkeypatch.setattr(candidates.int8_plan, "build_plan", spy_build)
    monkeypatch.setattr(candidates, "iter_outputs", spy_outputs)
    res = optimize_onnx(OptimizeConfig(model=src, out=tmp_path / "o.onnx", calib=tmp_path / "in.npz", samples=12,
                                  bench_seconds=0.2, weight_min_elements=64, max_slowdown=1.0,
                                  int8=Int8Options(speed_choice=False, adaround=False, formats=("u8s8-pc",)),
                                  candidates=("fp32-opt", "w8", "int8-qdq")))
    sp = res["samples"]
    assert (sp["given"], sp["calibration_count"], sp["held_out_count"]) == (20, 12, 8) and sp["fidelity_on"] == "held_out"
    assert seen["calibration"] == [sp["calibration"]]  # the INT8 plan saw exactly the calibration part
    assert seen["fidelity"] and all(f == sp["held_out"] for f in seen["fidelity"])  # every candidate's check
    assert not set(sp["calibration"]) & set(sp["held_out"])
    assert any(c["name"] == "int8-qdq" and c.get("cosine") is not None for c in res["candidates"])
