"""The one timer: latency of one or several models, timed interleaved in one process, in ms.

Every latency edgeslim reports comes from `interleaved_latency` (raw per-round times:
`interleaved_times`): a pipeline stage, `edgeslim measure`, the INT8 format picker and the INT8 plan's
per-layer choice (`onnx_kernel_profile`: ONNX Runtime's per-kernel profile over this loop's rounds),
`optimize`'s candidates, PyTorch eager beside ONNX Runtime, LiteRT, OpenVINO and the early-exit cascades. What it times is a *runner*: an ONNX Runtime session with its feed, or any
zero-argument callable (a LiteRT invoke, a PyTorch forward, an exit cascade). Several runners are timed
in rounds, each round starting with a different one, so that load from other processes (bursts of ms
on a shared machine) lands on all of them alike: ratios between models are the trustworthy figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[], object]


@dataclass(frozen=True)
class Latency:
    """Percentiles of single calls in ms (per call: per batch when batch > 1)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    batch: int
    threads: int

    def as_dict(self, prefix: str = "latency_ms_") -> dict:
        return {
            f"{prefix}p50": round(self.p50_ms, 4),
            f"{prefix}p90": round(self.p90_ms, 4),
            f"{prefix}p99": round(self.p99_ms, 4),
            f"{prefix}mean": round(self.mean_ms, 4),
        }


def percentiles(times_s: list[float], batch: int, threads: int) -> Latency:
    t = np.asarray(times_s) * 1e3
    return Latency(
        float(np.percentile(t, 50)), float(np.percentile(t, 90)), float(np.percentile(t, 99)),
        float(t.mean()), len(t), batch, threads,
    )


def ort_runner(sess: Any, feed: Mapping[str, np.ndarray]) -> Runner:
    """A runner for an ONNX Runtime session (anything with `.run(None, feed)`) on `feed`."""
    fd = dict(feed)
    return lambda: sess.run(None, fd)


def _feed_batch(feed: Mapping[str, np.ndarray] | None) -> int:
    first = next(iter(feed.values()), None) if feed else None
    return int(first.shape[0]) if first is not None and first.ndim else 1


def interleaved_latency(
    runners: Mapping[str, Any], feeds: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
    seconds: float | None = None, rounds: int = 20, per_round: int = 1, warmup: int = 5, min_rounds: int = 30,
    max_seconds: float | None = None, threads: int = 1, batch: int | None = None,
) -> dict[str, Latency]:
    """Per-name Latency (ms per call) of each runner, timed interleaved in one loop (module docstring).

    `runners[name]` is a zero-argument callable, or an ONNX Runtime session run on `feeds[name]`. Each
    round calls every runner `per_round` times, starting with a different one each round. With `seconds`,
    rounds go on for about that much wall time (at least `min_rounds`, at most 20x the time); otherwise
    `rounds` of them, or fewer (at least `min_rounds`) once `max_seconds` have passed. `batch` (samples per
    call) defaults to the leading dim of the feed, else 1; `threads` is recorded, not set (the session or
    library of each runner sets it).
    """
    times = interleaved_times(runners, feeds, seconds=seconds, rounds=rounds, per_round=per_round, warmup=warmup,
                              min_rounds=min_rounds, max_seconds=max_seconds)
    out = {}
    for n in times:
        b = batch if batch is not None else _feed_batch(feeds.get(n) if feeds else None)
        out[n] = percentiles(times[n], b, threads)
    return out


def interleaved_times(
    runners: Mapping[str, Any], feeds: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
    seconds: float | None = None, rounds: int = 20, per_round: int = 1, warmup: int = 5, min_rounds: int = 30,
    max_seconds: float | None = None,
) -> dict[str, list[float]]:
    """The raw timings (s) behind `interleaved_latency` (same arguments): per name, `per_round` calls per
    round, in round order, so that entry i of two runners comes from the same round. Comparisons with
    confidence intervals take per-round ratios of these (`measure.decide`)."""
    names = list(runners)
    calls: dict[str, Runner] = {}
    for n in names:
        r = runners[n]
        if not callable(r) and hasattr(r, "run"):  # an ONNX Runtime session (or one like it)
            if feeds is None or n not in feeds:
                raise AssertionError(f"interleaved_latency: session '{n}' needs a feed")
            calls[n] = ort_runner(r, feeds[n])
        else:
            calls[n] = r
    for n in names:
        for _ in range(warmup):
            calls[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while names:
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            call = calls[n]
            for _ in range(per_round):
                t0 = time.perf_counter()
                call()
                times[n].append(time.perf_counter() - t0)
        r += 1
        elapsed = time.perf_counter() - start
        if seconds is None:
            if r >= rounds or (max_seconds is not None and elapsed > max_seconds and r >= min(rounds, min_rounds)):
                break
        elif (elapsed > seconds and r >= min_rounds) or elapsed > 20 * seconds:
            break
    return times


def onnx_interleaved(
    models: Mapping[str, str | Path], feeds: Mapping[str, Mapping[str, np.ndarray]] | Mapping[str, np.ndarray], *,
    threads: int = 1, **timer: Any,
) -> dict[str, Latency]:
    """`interleaved_latency` of ONNX files: one fresh session each (same optimisation level and threads),
    on one shared feed {input: array} or per-model feeds {model: feed}. `timer`: the timer's options."""
    from edgeslim.onnxkit.session import session

    sess = {k: session(p, threads=threads) for k, p in models.items()}
    shared = not all(k in feeds and isinstance(feeds[k], Mapping) for k in models)
    fd: dict[str, dict[str, np.ndarray]] = {}
    for k, s in sess.items():
        f: dict[str, np.ndarray] = dict(feeds if shared else feeds[k])  # type: ignore[arg-type]
        names = [i.name for i in s.get_inputs()]
        if set(f) != set(names) and len(f) == len(names) == 1:  # one input, named differently
            f = {names[0]: next(iter(f.values()))}
        fd[k] = f
    return interleaved_latency(sess, fd, threads=threads, **timer)


def onnx_kernel_profile(models: Mapping[str, bytes], feed: Mapping[str, np.ndarray], *, runs: int = 15,
                        threads: int = 1, warmup: int = 3) -> dict[str, dict[str, float]]:
    """{model key: {ORT node name: median kernel time in us}}: ONNX Runtime's own per-kernel profile of
    each serialized model on `feed`, over `runs` rounds of this module's interleaved loop (the sessions
    alternate, so load lands on all alike). Why: choosing INT8 or float layer by layer needs each
    layer's time; timing a whole model per layer would take minutes."""
    import json
    import tempfile
    from collections import defaultdict

    import onnxruntime as ort

    from edgeslim.onnxkit.ort_options import session_options

    with tempfile.TemporaryDirectory() as td:
        sess: dict[str, Any] = {}
        for k, data in models.items():
            opts = session_options(threads)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(td) / f"p{len(sess)}")
            sess[k] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        fd = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sess.items()}
        interleaved_times(sess, fd, rounds=runs, warmup=warmup, min_rounds=runs)
        out = {}
        for k, s in sess.items():
            events = json.loads(Path(s.end_profiling()).read_text())
            per: dict[str, list[float]] = defaultdict(list)
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    per[e["name"][: -len("_kernel_time")]].append(float(e["dur"]))
            out[k] = {n: float(np.median(v[warmup:] or v)) for n, v in per.items()}  # warm-up runs are profiled too
        return out


def openvino_latency(model_path: str | Path, runs: int = 100) -> dict | None:
    """OpenVINO CPU latency (ms p50/mean, through the one timer) of an ONNX model on random inputs at its
    smallest static shape, or None when OpenVINO is not installed."""
    from edgeslim.deploy.compile import available_backends

    if not available_backends()["openvino"]:
        return None
    import openvino as ov  # type: ignore[import-not-found]

    core = ov.Core()
    compiled = core.compile_model(str(model_path), "CPU", {"INFERENCE_NUM_THREADS": 1})
    inp = compiled.inputs[0]
    shape = [d if d > 0 else 1 for d in inp.get_partial_shape().get_min_shape()]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    req = compiled.create_infer_request()
    lat = interleaved_latency({"openvino": lambda: req.infer({0: x})}, rounds=runs, warmup=10)["openvino"]
    return {"openvino_ms_p50": lat.p50_ms, "openvino_ms_mean": lat.mean_ms}
