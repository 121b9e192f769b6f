"""Measuring the files every tool wrote, with edgeslim's own measurement functions, and the comparison
table (used by benchmarks/peers.py). The peers' files are models edgeslim did not make: they are measured
exactly like edgeslim's: accuracy (or output cosine) in ONNX Runtime, size on disk, latency p50 timed
interleaved in one loop with the same threads (`edgeslim.measure.latency.interleaved_latency`), the
activation arena (`edgeslim.measure.arena.plan_arena`) and estimated energy per inference
(`edgeslim.measure.energy.estimate_energy`, labelled with its method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.measure.arena import plan_arena
from edgeslim.measure.energy import estimate_energy
from edgeslim.measure.latency import interleaved_latency
from edgeslim.onnxkit.inputs import Feed, input_specs
from edgeslim.onnxkit.load import read_onnx
from edgeslim.onnxkit.session import session
from edgeslim.onnxopt.fidelity import compare

LATENCY_TIE = 1.05  # interleaved p50 within 5% counts as equal speed (the timer's noise on a shared host)


@dataclass
class Row:
    tool: str                       # what ran, as a user would name it
    kind: str                       # "reference" (the model before the job) | "edgeslim" | "peer"
    onnx: Path | None = None        # what ONNX Runtime runs
    stored: Path | None = None      # the file the tool stores when it is not the ONNX (.eshare, sparse .npz, .gz)
    wall_s: float | None = None     # the tool's wall time for the job, s
    note: str = ""
    reason: str | None = None       # why this row has no numbers
    quality: float | None = None    # top-1 accuracy 0-1, or the worst output's cosine vs the reference
    size_bytes: int | None = None   # stored file (or the ONNX), bytes
    onnx_bytes: int | None = None
    p50_ms: float | None = None
    arena_bytes: int | None = None
    energy_mj: float | None = None
    energy_method: str = ""


@dataclass
class Job:
    name: str
    title: str
    metric: str                     # "accuracy" | "cosine"
    task: Any = None                # edgeslim Task for accuracy jobs
    feeds: list[Feed] = field(default_factory=list)  # check feeds (cosine jobs); [0] is timed
    rows: list[Row] = field(default_factory=list)
    device: str = "host"

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def file_bytes(p: Path) -> int:
    """Bytes on disk, external-data files beside an ONNX included."""
    n = p.stat().st_size
    if p.suffix == ".onnx":
        try:
            import onnx

            m = onnx.load(str(p), load_external_data=False)
            locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
            n += sum((p.parent / loc).stat().st_size for loc in locs)
        except Exception:  # noqa: BLE001 - a file ONNX cannot parse is measured as it is
            pass
    return n


def _accuracy(sess: Any, task: Any) -> float:
    """Top-1 on the task's test split; a model exported at a fixed batch runs at that batch (a remainder
    that does not fill one is left out)."""
    inp = sess.get_inputs()[0]
    lead = inp.shape[0] if inp.shape else None
    fixed = isinstance(lead, int) and lead > 0
    b = lead if fixed else 256
    x = task.x_test.astype(np.float32)
    end = len(x) - len(x) % b if fixed else len(x)
    outs = [sess.run(None, {inp.name: x[i : min(i + b, end)]})[0] for i in range(0, end, b)]
    return float((np.concatenate(outs).argmax(1) == task.y_test[:end]).mean())


def _feed_for(sess: Any, job: Job) -> Feed:
    if job.metric == "accuracy":
        inp = sess.get_inputs()[0]
        return {inp.name: job.task.x_test[:1].astype(np.float32)}
    return job.feeds[0]


def _shapes(feed: Feed) -> dict[str, list[int]]:
    return {k: list(np.shape(v)) for k, v in feed.items()}


def measure_job(job: Job, seconds: float, threads: int = 1) -> None:
    """Fill every runnable row's figures; latency of all of them interleaved in one loop."""
    ref_out = None
    if not any(r.reason is None and r.onnx is not None for r in job.rows):
        return
    if job.metric == "cosine":
        ref = next(r for r in job.rows if r.kind == "reference")
        rs = session(ref.onnx, threads=threads)
        ref_out = [rs.run(None, f) for f in job.feeds]
        names = [o.name for o in rs.get_outputs()]
    sessions, feeds = {}, {}
    for r in job.rows:
        if r.reason is not None or r.onnx is None:
            r.reason = r.reason or "no model written"
            continue
        try:
            s = session(r.onnx, threads=threads)
            feed = _feed_for(s, job)
            s.run(None, feed)
            if job.metric == "accuracy":
                r.quality = _accuracy(s, job.task)
            else:
                got = [s.run(None, f) for f in job.feeds]
                r.quality = compare(names, ref_out, got).cosine
            r.onnx_bytes = file_bytes(r.onnx)
            r.size_bytes = file_bytes(r.stored) if r.stored is not None else r.onnx_bytes
            proto = read_onnx(r.onnx)
            shapes = _shapes(feed) if len(input_specs(proto)) > 0 else None
            try:
                r.arena_bytes = plan_arena(proto, reorder=False, shapes=shapes).arena_bytes
            except Exception as e:  # noqa: BLE001 - the planner's limits, said in the note
                r.note = (r.note + "; " if r.note else "") + f"arena: {str(e).splitlines()[0][:80]}"
            try:
                en = estimate_energy(proto, job.device, shapes=shapes)
                r.energy_mj, r.energy_method = en.mj, en.method
            except Exception as e:  # noqa: BLE001
                r.note = (r.note + "; " if r.note else "") + f"energy: {str(e).splitlines()[0][:80]}"
            sessions[r.tool], feeds[r.tool] = s, feed
        except Exception as e:  # noqa: BLE001 - a file ONNX Runtime cannot run: the row says so
            r.reason = f"ONNX Runtime cannot run it: {str(e).strip().splitlines()[0][:160]}"
    if sessions:
        lat = interleaved_latency(sessions, feeds, seconds=seconds, per_round=5, warmup=5, min_rounds=10,
                                  threads=threads)
        for r in job.rows:
            if r.tool in lat:
                r.p50_ms = lat[r.tool].p50_ms


# --- the comparison --------------------------------------------------------------------------------------


def _best(rows: list[Row], attr: str, high: bool) -> float | None:
    vals = [getattr(r, attr) for r in rows if getattr(r, attr) is not None]
    if not vals:
        return None
    return max(vals) if high else min(vals)


def _beats(job: Job, a: float, b: float) -> bool:
    """Quality `a` better than `b`: any test sample for accuracy; more than 1e-5 for cosine (float noise)."""
    return a > b + (1e-9 if job.metric == "accuracy" else 1e-5)


def verdict(job: Job) -> str:
    """The issue's bar: no peer is at least as small and as fast (within LATENCY_TIE) while more accurate.
    Also every column where edgeslim is behind the best peer of that column, which the docs explain."""
    es = [r for r in job.rows if r.kind == "edgeslim" and r.quality is not None]
    peers = [r for r in job.rows if r.kind == "peer" and r.quality is not None]
    if not es:
        return "edgeslim: no measured row"
    if not peers:
        return "no peer row with numbers"
    e = es[0]
    assert e.quality is not None and e.size_bytes is not None and e.p50_ms is not None
    dominated = [p.tool for p in peers if _beats(job, p.quality or 0.0, e.quality) and p.size_bytes is not None
                 and p.size_bytes <= e.size_bytes and p.p50_ms is not None and p.p50_ms <= e.p50_ms * LATENCY_TIE]
    q, s, t = _best(peers, "quality", True), _best(peers, "size_bytes", False), _best(peers, "p50_ms", False)
    behind = []
    if q is not None and _beats(job, q, e.quality):
        behind.append(f"quality {_q(job, e.quality)} < best peer {_q(job, q)}")
    if s is not None and e.size_bytes > s:
        behind.append(f"size {e.size_bytes:,} B > smallest peer {s:,} B ({e.size_bytes / s:.3f}x)")
    if t is not None and e.p50_ms > t * LATENCY_TIE:
        behind.append(f"p50 {e.p50_ms:.4f} ms > fastest peer {t:.4f} ms ({e.p50_ms / t:.2f}x)")
    head = (f"DOMINATED by {', '.join(dominated)}" if dominated else
            "no peer is as small and as fast while more accurate")
    return head + ("; edgeslim best on quality, size and latency" if not behind else
                   "; behind the best peer of a column: " + "; ".join(behind))


def _q(job: Job, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if job.metric == "accuracy" else f"{v:.5f}"


def _n(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


HEADER = ("| tool | accuracy / cosine | size B | ONNX B | p50 ms | arena B | energy mJ (est.) | tool s | "
          "vs best peer: quality | size | p50 | arena | energy | tool s | note |")
NCOL = HEADER.count("|") - 1


def table(job: Job) -> list[str]:
    """The job's markdown table; the last columns compare every row with the best peer of each column."""
    peers = [r for r in job.rows if r.kind == "peer"]
    bq = _best(peers, "quality", True)
    low = ("size_bytes", "p50_ms", "arena_bytes", "energy_mj", "wall_s")
    best = {a: _best(peers, a, False) for a in low}
    lines = [f"### {job.title}", "", HEADER, "|" + "---|" * NCOL]
    for r in job.rows:
        if r.reason is not None:
            lines.append(f"| {r.tool} | " + " | ".join(["-"] * (NCOL - 2)) + f" | {r.reason} |")
            continue
        dq = "-"
        if bq is not None and r.quality is not None:
            dq = f"{100 * (r.quality - bq):+.2f} pts" if job.metric == "accuracy" else f"{r.quality - bq:+.5f}"
        lines.append(
            f"| {r.tool} | {_q(job, r.quality)} | {_n(r.size_bytes, ',')} | {_n(r.onnx_bytes, ',')} | "
            f"{_n(r.p50_ms, '.4f')} | {_n(r.arena_bytes, ',')} | {_n(r.energy_mj, '.4g')} | {_n(r.wall_s, '.1f')} | "
            f"{dq} | " + " | ".join(_ratio(getattr(r, a), best[a]) for a in low) + f" | {r.note} |")
    lines += ["", f"Verdict: {verdict(job)}.", ""]
    return lines


def _ratio(v: float | None, best: float | None) -> str:
    return "-" if v is None or not best else f"{v / best:.2f}x"


def as_json(job: Job) -> dict:
    return {"name": job.name, "title": job.title, "metric": job.metric, "verdict": verdict(job), "rows": [
        {k: (str(v) if isinstance(v, Path) else v) for k, v in r.__dict__.items()} for r in job.rows]}
