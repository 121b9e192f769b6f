"""The timing decision rule (`measure.decide`): per-round ratios, confidence intervals, the pick.
Synthetic timings only: no test here times anything."""

from __future__ import annotations

import numpy as np

from edgeslim.measure.decide import Option, choose_option, median_ci, ratio


def _times(ms: float, n: int = 60, jitter: float = 0.03, seed: int = 0) -> list[float]:
    """Per-round times (s) around `ms`: a load factor shared by every model of a round (bursts from
    other processes) times the model's own jitter (lognormal, `jitter` sigma)."""
    shared = 1 + 2.0 * (np.random.default_rng(100).random(n) < 0.2)
    own = np.exp(jitter * np.random.default_rng(seed).standard_normal(n))
    return list(ms * 1e-3 * shared * own)


def test_median_ci_bounds_and_determinism() -> None:
    x = np.arange(100, dtype=float)
    med, lo, hi = median_ci(x)
    assert med == 49.5 and (lo, hi) == (40.0, 59.0)  # order statistics 40 and 59 of 0..99
    assert median_ci(x) == median_ci(x[::-1])  # order does not matter, no resampling
    assert median_ci(np.array([1.0, 2.0])) == (1.5, 1.0, 2.0)  # too few rounds: the full range


def test_ratio_is_robust_to_shared_bursts() -> None:
    ref, cand = _times(10.0, seed=1), _times(5.0, seed=2)
    assert max(ref) / min(ref) > 2.5  # the raw times are all over the place...
    r = ratio(cand, ref)
    assert abs(r.median - 0.5) < 0.02 and r.speed_verdict() == "faster" and 1.9 < r.speedup < 2.1  # ...the ratio is not
    assert ratio(ref, cand).speed_verdict() == "slower"
    assert ratio(_times(10.0, seed=3), _times(10.0, seed=4)).speed_verdict() == "tied"


def test_choose_prefers_fastest_big_shrink_and_smaller_file_on_ties() -> None:
    ref = _times(10.0, seed=0)
    opts = [
        Option("w8", 25_000, True, _times(10.0, seed=1)),     # 4x smaller, same speed
        Option("int8", 27_000, True, _times(6.0, seed=2)),    # 3.7x smaller, faster
        Option("int8b", 26_000, True, _times(6.05, seed=3)),  # tied with int8 on speed, a bit smaller
        Option("fp32", 90_000, True, _times(5.0, seed=4)),    # fastest but only 1.1x smaller
        Option("bad", 10_000, False, _times(3.0, seed=5)),    # unfaithful
        Option("slow", 20_000, True, _times(12.0, seed=6)),   # slower than the original
    ]
    best = choose_option(opts, ref, 100_000)
    assert best is not None and best.name == "int8b"
    why = {o.name: o.why for o in opts}
    assert why["int8b"].startswith("won") and "tied" in why["int8"]
    assert "fidelity" in why["bad"] and "slower than the original" in why["slow"]
    assert "< 1.8x" in why["fp32"] and "slower than int8b" in why["w8"]
    # speed ignores the size floor; size takes the smallest (files within 5% count as equal, then fastest)
    fastest = choose_option(opts, ref, 100_000, prefer="speed")
    assert fastest is not None and fastest.name == "fp32"
    smallest = choose_option(opts, ref, 100_000, prefer="size")
    assert smallest is not None and smallest.name == "int8b"  # w8 is 4% smaller but slower


def test_choose_is_deterministic_given_timings() -> None:
    ref = _times(10.0, seed=0)
    picks = set()
    for _ in range(3):
        opts = [Option("a", 40_000, True, _times(9.9, seed=1)), Option("b", 30_000, True, _times(10.0, seed=2))]
        got = choose_option(opts, ref, 100_000)
        picks.add(got.name if got else None)
        assert "tied" in opts[0].why
    assert picks == {"b"}  # a and b tie on speed: the smaller file wins, every time
    # the same holds whichever noise the rounds had: ties are decided by size, not by the noise
    for seed in range(5):
        opts = [Option("a", 40_000, True, _times(9.9, seed=10 + seed)),
                Option("b", 30_000, True, _times(10.0, seed=20 + seed))]
        assert choose_option(opts, _times(10.0, seed=30 + seed), 100_000).name == "b"  # type: ignore[union-attr]


def test_choose_keeps_original_when_nothing_qualifies() -> None:
    ref = _times(10.0)
    opts = [Option("slow", 50_000, True, _times(14.0, seed=1)), Option("big", 120_000, True, _times(8.0, seed=2))]
    assert choose_option(opts, ref, 100_000) is None
    assert "not smaller" in opts[1].why and "slower" in opts[0].why


def test_same_kernels_are_tied_whatever_the_timer_says() -> None:
    """w8 and w16 decode to the same float kernels at load: the smaller file wins even when the timer puts
    the larger one 6% ahead (the flip seen between runs on PP-OCR cls and silero_vad)."""
    ref = _times(10.0, seed=0)
    w8 = Option("w8", 200_000, True, _times(10.0, seed=1, jitter=0.002), kernels="k-fp32")
    w16 = Option("w16", 390_000, True, _times(9.4, seed=2, jitter=0.002), kernels="k-fp32")
    assert ratio(w8.times, w16.times).speed_verdict(0.03) == "slower"  # timing alone would pick w16
    best = choose_option([w8, w16], ref, 600_000, prefer="speed")
    assert best is w8 and "same kernels as w8" in w16.why
    # without signatures the timer decides
    w8.kernels = w16.kernels = ""
    assert choose_option([w8, w16], ref, 600_000, prefer="speed") is w16


def test_kernel_signature_sees_through_weight_storage(tmp_path) -> None:
    """Int8- and fp16-stored weights (Cast/Mul decode folded at load) give the float model's signature; a
    graph with other ops does not."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.onnxkit.session import kernel_signature

    w = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)

    def model(decode: str) -> bytes:
        nodes, inits = [], []
        if decode == "fp32":
            inits.append(numpy_helper.from_array(w, "W"))
        elif decode == "fp16":
            inits.append(numpy_helper.from_array(w.astype(np.float16), "W16"))
            nodes.append(helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT))
        else:  # int8 * scale
            scale = np.abs(w).max() / 127
            inits += [numpy_helper.from_array(np.round(w / scale).astype(np.int8), "W8"),
                      numpy_helper.from_array(np.array(scale, np.float32), "S")]
            nodes += [helper.make_node("Cast", ["W8"], ["W8f"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", ["W8f", "S"], ["W"])]
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["h"]))
        nodes.append(helper.make_node("Relu" if decode != "other" else "Sigmoid", ["h"], ["y"]))
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    sig = {k: kernel_signature(model(k)) for k in ("fp32", "fp16", "int8", "other")}
    assert sig["fp32"] and sig["fp32"] == sig["fp16"] == sig["int8"]
    assert sig["other"] != sig["fp32"]
    p = tmp_path / "m.onnx"
    p.write_bytes(model("int8"))
    assert kernel_signature(p) == sig["fp32"]
    assert kernel_signature(b"not onnx") == ""


def test_speed_tie_goes_to_the_more_faithful_file() -> None:
    """The vendor siamese case: int8-qdq and int8-qop timed tied, qop 0.8% smaller but 18x the error."""
    ref = _times(10.0, seed=0)
    qdq = Option("int8-qdq", 15_175_815, True, _times(5.0, seed=1), error=0.013)
    qop = Option("int8-qop", 15_048_663, True, _times(5.02, seed=2), error=0.24)
    best = choose_option([qop, qdq], ref, 60_000_000)
    assert best is qdq and "more faithful" in qdq.why
    assert "less faithful (error 0.24 vs 0.013)" in qop.why
    # errors within 1.25x of each other are equally faithful: the smaller file wins as before
    qop.error = 0.015
    assert choose_option([qop, qdq], ref, 60_000_000) is qop
    # without error figures the rule is the old one (smaller file)
    qop.error = qdq.error = None
    assert choose_option([qop, qdq], ref, 60_000_000) is qop


def test_default_tolerance_checks_probabilities_and_the_decision() -> None:
    from edgeslim.measure.fidelity import Tolerance, compare_outputs

    ref = [[np.array([[p]], np.float32)] for p in (0.1, 0.45, 0.51, 0.9)]  # one sigmoid score per sample
    near = [[np.array([[p + 0.01]], np.float32)] for p in (0.1, 0.45, 0.51, 0.9)]
    flip = [[np.array([[p]], np.float32)] for p in (0.1, 0.45, 0.48, 0.9)]  # sample 3 crosses 0.5
    far = [[np.array([[p]], np.float32)] for p in (0.1, 0.45, 0.51, 0.5)]  # 0.4 off, same side
    f = compare_outputs(["p"], ref, near)
    assert f.prob_max_abs == np.float32(0.01) or abs(f.prob_max_abs - 0.01) < 1e-6
    assert f.agreement == 1.0 and f.samples == 4 and Tolerance().broken(f) is None
    assert Tolerance().broken(compare_outputs(["p"], ref, flip)) == "agreement at threshold 0.5 0.750 < 0.98"
    assert compare_outputs(["p"], ref, flip).cosine > 0.995  # cosine alone would have let it through
    assert "probability max abs err 0.4 > 0.05" in (Tolerance(min_cosine=None).broken(compare_outputs(["p"], ref, far)) or "")
    shown = Tolerance().show(f)
    assert "probability max abs err 0.01 <= 0.05" in shown and "agreement at threshold 0.5 1.000 >= 0.98" in shown
    # logits (outside 0-1) get neither check
    g = compare_outputs(["z"], [[np.array([[-3.0, 2.0]], np.float32)]], [[np.array([[-3.0, 2.5]], np.float32)]])
    assert g.prob_max_abs is None and g.agreement is None and "no probability output" in Tolerance().show(g)
