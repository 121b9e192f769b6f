"""Measuring the files every tool wrote, through edgeslim's measurement core, and the comparison table
(used by benchmarks/peers.py). The peers' files are models edgeslim did not make: each file, edgeslim's and
the peers', goes through `edgeslim.measure.core.measure_model` exactly as `edgeslim measure` would take it
(accuracy on the task's test split, or fidelity against the original on the job's `--inputs` file; size on
disk; the activation arena; energy per inference with its method label), and then all files of a job are
timed together, interleaved in one loop with the same threads, by the core's one timer (`Measurer.time`
over each measurement's runner). No figure here is computed by code of its own.

Sizes are compared on the same encodings for every tool: the ONNX file ONNX Runtime runs (raw) and its
gzip -9 (`onnx_gzip_bytes`, computed here for every row), beside what each tool stores in its own format
(`size_bytes`: edgeslim's sparse .npz, a peer's .gz, else the ONNX). The verdict line speaks to every
column the table prints.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.errors import EdgeslimError
from edgeslim.measure.core import Measurement, Measurer, measure_model

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
    onnx_gzip_bytes: int | None = None  # gzip -9 of the ONNX file: the same encoding for every tool
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
    inputs: Path | None = None      # cosine jobs: the check inputs (.npz, one array per input; first one timed)
    rows: list[Row] = field(default_factory=list)
    device: str = "host"

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def _one(r: Row, job: Job, reference: Path | None, threads: int) -> Measurement:
    """One file through the measurement core, as `edgeslim measure FILE [--task T | --inputs X --reference R]`
    takes it; latency is timed afterwards with the job's other files."""
    if job.metric == "accuracy":
        m = measure_model(r.onnx, task=job.task, device=job.device, threads=threads, latency=False,
                          size_path=r.stored)
        r.quality = m.accuracy
    else:
        m = measure_model(r.onnx, job.inputs, reference=reference, device=job.device, threads=threads,
                          latency=False, size_path=r.stored)
        r.quality = m.fidelity.cosine if m.fidelity is not None else None
    r.size_bytes, r.onnx_bytes = m.size_bytes, m.onnx_size_bytes
    r.onnx_gzip_bytes = len(gzip.compress(Path(r.onnx).read_bytes(), 9)) if r.onnx is not None else None
    r.arena_bytes = m.arena.get("arena_bytes")
    r.energy_mj, r.energy_method = m.energy.get("energy_mj"), str(m.energy.get("energy_method", ""))
    notes = [m.arena["arena_note"]] if m.arena.get("arena_note") else []
    notes += [m.energy["energy_note"]] if m.energy.get("energy_note") else []
    if notes:
        r.note = "; ".join([r.note, *notes] if r.note else notes)
    return m


def measure_job(job: Job, seconds: float, threads: int = 1) -> None:
    """Fill every runnable row's figures through the core; latency of all of them interleaved in one loop."""
    ref = next((r.onnx for r in job.rows if r.kind == "reference"), None)
    runners = {}
    for r in job.rows:
        if r.reason is not None or r.onnx is None or not Path(r.onnx).is_file():
            r.reason = r.reason or "no model written"
            continue
        try:
            runners[r.tool] = _one(r, job, ref, threads).runner
        except EdgeslimError as e:  # the core refuses the file (e.g. the ONNX checker's verdict): the row says so
            msg = str(e).strip().splitlines()[0].replace(f"{r.onnx}: ", "")
            r.reason = f"edgeslim's measurement core refuses the file: {msg[:200]}"
        except Exception as e:  # noqa: BLE001 - a file ONNX Runtime cannot run: the row says so
            r.reason = f"ONNX Runtime cannot run it: {str(e).strip().splitlines()[0][:160]}"
    if runners:
        lat = Measurer(threads=threads).time(runners, seconds=seconds, per_round=5, warmup=5, min_rounds=10)
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


# (column, Row attribute, higher is better) for every figure the table prints
COLUMNS = (("quality", "quality", True), ("stored size", "size_bytes", False), ("ONNX size", "onnx_bytes", False),
           ("ONNX gzip size", "onnx_gzip_bytes", False), ("p50", "p50_ms", False), ("arena", "arena_bytes", False),
           ("energy", "energy_mj", False), ("tool time", "wall_s", False))


def _show(job: Job, attr: str, v: float) -> str:
    if attr == "quality":
        return _q(job, v)
    if attr in ("p50_ms",):
        return f"{v:.4f} ms"
    if attr == "energy_mj":
        return f"{v:.4g} mJ"
    if attr == "wall_s":
        return f"{v:.1f} s"
    return f"{int(v):,} B"


def verdict(job: Job) -> str:
    """The issue's bar: no peer is at least as small (ONNX gzip, the same encoding for all) and as fast (within
    LATENCY_TIE) while more accurate. Then, for every column of the table, whether edgeslim is best (or tied)
    or behind the best peer of that column, and by how much."""
    es = [r for r in job.rows if r.kind == "edgeslim" and r.quality is not None]
    peers = [r for r in job.rows if r.kind == "peer" and r.quality is not None]
    if not es:
        return "edgeslim: no measured row"
    if not peers:
        return "no peer row with numbers"
    e = es[0]
    assert e.quality is not None and e.onnx_gzip_bytes is not None and e.p50_ms is not None
    dominated = [p.tool for p in peers if _beats(job, p.quality or 0.0, e.quality) and p.onnx_gzip_bytes is not None
                 and p.onnx_gzip_bytes <= e.onnx_gzip_bytes and p.p50_ms is not None
                 and p.p50_ms <= e.p50_ms * LATENCY_TIE]
    ahead, behind, missing = [], [], []
    for col, attr, high in COLUMNS:
        mine, best = getattr(e, attr), _best(peers, attr, high)
        if mine is None or best is None:
            missing.append(col)
            continue
        if high:
            lost = _beats(job, best, mine)
        else:
            lost = mine > best * (LATENCY_TIE if attr == "p50_ms" else 1.0)
        if lost:
            ratio = f" ({mine / best:.3g}x)" if not high and best else ""
            behind.append(f"{col} {_show(job, attr, mine)} vs best peer {_show(job, attr, best)}{ratio}")
        else:
            ahead.append(col)
    head = (f"DOMINATED by {', '.join(dominated)}" if dominated else
            "no peer is as small (ONNX gzip) and as fast while more accurate")
    out = head + "; edgeslim best or tied on " + (", ".join(ahead) or "no column")
    if behind:
        out += "; behind the best peer on " + "; ".join(behind)
    if missing:
        out += "; not compared (no figure): " + ", ".join(missing)
    return out


def _q(job: Job, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if job.metric == "accuracy" else f"{v:.5f}"


def _n(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


HEADER = ("| tool | accuracy / cosine | stored B (own format) | ONNX B | ONNX gzip B | p50 ms | arena B | "
          "energy mJ (est.) | tool s | vs best peer: quality | stored | ONNX | ONNX gzip | p50 | arena | energy | "
          "tool s | note |")
NCOL = HEADER.count("|") - 1


def table(job: Job) -> list[str]:
    """The job's markdown table; the last columns compare every row with the best peer of each column."""
    peers = [r for r in job.rows if r.kind == "peer"]
    bq = _best(peers, "quality", True)
    low = ("size_bytes", "onnx_bytes", "onnx_gzip_bytes", "p50_ms", "arena_bytes", "energy_mj", "wall_s")
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
            f"{_n(r.onnx_gzip_bytes, ',')} | "
            f"{_n(r.p50_ms, '.4f')} | {_n(r.arena_bytes, ',')} | {_n(r.energy_mj, '.4g')} | {_n(r.wall_s, '.1f')} | "
            f"{dq} | " + " | ".join(_ratio(getattr(r, a), best[a]) for a in low) + f" | {r.note} |")
    lines += ["", f"Verdict: {verdict(job)}.", ""]
    return lines


def _ratio(v: float | None, best: float | None) -> str:
    return "-" if v is None or not best else f"{v / best:.2f}x"


def as_json(job: Job) -> dict:
    return {"name": job.name, "title": job.title, "metric": job.metric, "verdict": verdict(job), "rows": [
        {k: (str(v) if isinstance(v, Path) else v) for k, v in r.__dict__.items()} for r in job.rows]}
