"""Latency of an ONNX model in ONNX Runtime: warm-up, repeated timed runs, percentiles in ms."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.onnxkit.session import session


@dataclass(frozen=True)
class Latency:
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


def interleaved_latency(
    sessions: dict[str, Any], feeds: dict[str, dict[str, np.ndarray]], *, seconds: float | None = None,
    rounds: int = 20, per_round: int = 1, warmup: int = 5, min_rounds: int = 30, threads: int = 1,
) -> dict[str, Latency]:
    """Per-name Latency (ms) of each ONNX Runtime session on its feed in `feeds` (the same data for all;
    input names may differ between models), timed in one process in
    rounds: each round runs every model `per_round` times, starting with a different model each round,
    so that load from other processes (bursts of ms) lands on all candidates alike. This is the figure
    to compare models by (before/after a pass, candidate formats). With `seconds`, rounds go on for
    about that much wall time (at least `min_rounds`, at most 20x the time); otherwise exactly `rounds`."""
    times = interleaved_times(sessions, feeds, seconds=seconds, rounds=rounds, per_round=per_round,
                              warmup=warmup, min_rounds=min_rounds)
    names = list(sessions)
    first = next(iter(feeds[names[0]].values()), None) if names else None
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    return {n: percentiles(times[n], batch, threads) for n in names}


def interleaved_times(
    sessions: dict[str, Any], feeds: dict[str, dict[str, np.ndarray]], *, seconds: float | None = None,
    rounds: int = 20, per_round: int = 1, warmup: int = 5, min_rounds: int = 30,
) -> dict[str, list[float]]:
    """The raw timings (s) behind `interleaved_latency`: per name, `per_round` runs per round, in round
    order, so that entry i of two models comes from the same round (per-round ratios: `measure.decide`)."""
    names = list(sessions)
    fd = {n: feeds[n] for n in names}
    for n in names:
        for _ in range(warmup):
            sessions[n].run(None, fd[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while True:
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            for _ in range(per_round):
                t0 = time.perf_counter()
                sessions[n].run(None, fd[n])
                times[n].append(time.perf_counter() - t0)
        r += 1
        elapsed = time.perf_counter() - start
        if seconds is None:
            if r >= rounds:
                break
        elif (elapsed > seconds and r >= min_rounds) or elapsed > 20 * seconds:
            break
    return times


def interleaved_p50_ms(
    paths: dict[str, Path], sample: np.ndarray, rounds: int = 20, per_round: int = 10, warmup: int = 10,
    threads: int = 1,
) -> dict[str, float]:
    """Median latency (ms per run) of each single-input ONNX model on `sample` (interleaved_latency)."""
    sess = {k: session(p, threads=threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: sample.astype(np.float32)} for k, s in sess.items()}
    lat = interleaved_latency(sess, feeds, rounds=rounds, per_round=per_round, warmup=warmup, threads=threads)
    return {k: v.p50_ms for k, v in lat.items()}


def onnx_latency(
    path: str, sample: np.ndarray, runs: int = 200, warmup: int = 20, threads: int = 1,
    max_seconds: float = 5.0,
) -> Latency:
    """Time `runs` inferences on `sample` (with its batch dim); stops early after `max_seconds`."""
    sess = session(path, threads=threads)
    name = sess.get_inputs()[0].name
    feed = {name: sample}
    for _ in range(warmup):
        sess.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times) >= 20:
            break
    return percentiles(times, int(sample.shape[0]), threads)
