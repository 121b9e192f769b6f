"""Latency of an ONNX model in ONNX Runtime: warm-up, repeated timed runs, percentiles in ms."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.deploy.runtime import session


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


def interleaved_p50_ms(
    paths: dict[str, Path], sample: np.ndarray, rounds: int = 20, per_round: int = 10, warmup: int = 10,
    threads: int = 1,
) -> dict[str, float]:
    """Median latency (ms per run) of each ONNX model on `sample`, timed in one process in rounds that
    visit every model in turn, so load from other processes hits all of them alike: the figure to
    compare models by (before/after a pass, candidate formats)."""
    sess = {k: session(p, threads=threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: sample.astype(np.float32)} for k, s in sess.items()}
    for k, s in sess.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sess}
    for _ in range(rounds):
        for k, s in sess.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


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
