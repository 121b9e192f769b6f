"""Interleaved latency of several ONNX models on the same multi-input feed.

All sessions are timed in one process, round-robin: each round runs every model once, so a burst
of load from other processes hits all candidates alike instead of whichever ran at that moment.
`edgeslim.measure.latency.onnx_latency` times one single-input model; this adds several inputs and
interleaving and reuses its percentile summary.
"""

from __future__ import annotations

import time

from edgeslim.measure.latency import Latency, percentiles
from edgeslim.onnxopt.inputs import Feed


def interleaved_latency(
    sessions: dict[str, object], feed: Feed, seconds: float = 6.0, warmup: int = 5, min_runs: int = 30,
    threads: int = 1,
) -> dict[str, Latency]:
    """Per-name Latency (ms) of each session on `feed`, over about `seconds` of wall time in all."""
    names = list(sessions)
    for n in names:
        for _ in range(warmup):
            sessions[n].run(None, feed)  # type: ignore[attr-defined]
    # one run of each model per round, starting with a different model each round, so that load from
    # other processes (bursts of ms) lands on all candidates alike
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while True:
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            t0 = time.perf_counter()
            sessions[n].run(None, feed)  # type: ignore[attr-defined]
            times[n].append(time.perf_counter() - t0)
        r += 1
        elapsed = time.perf_counter() - start
        if (elapsed > seconds and r >= min_runs) or elapsed > 20 * seconds:
            break
    batch = int(next(iter(feed.values())).shape[0]) if feed and next(iter(feed.values())).ndim else 1
    return {n: percentiles(times[n], batch, threads) for n in names}
