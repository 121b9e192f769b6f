"""`optimize_onnx()`: the whole job behind `edgeslim optimize`.

load + repair -> feeds (calibration .npz or synthetic) -> one seeded split of the samples into a
calibration part and a held-out part -> original outputs -> candidates (built and calibrated on the
calibration part only) -> fidelity and the tolerance gate on the held-out part (samples no quantizer saw)
-> interleaved latency (original vs every candidate that kept its outputs close) -> choose -> write.

Samples (`split_samples`): every given sample is used: up to `samples` calibrate, all the others (at
least a quarter, at most `MAX_HELD_OUT`) are held out for fidelity; the report says how many of each,
which indices, and why any were left out.

The rule (`measure.decide.choose_option`, "never slower by default"): every comparison is a per-round time
ratio from the same interleaved rounds, with a confidence interval. Among candidates within tolerance,
smaller than the original and whose median ratio to it is at most 1 + `max_slowdown`, the default
(`prefer="balanced"`) keeps the fastest of those at least `min_shrink` (1.8x) smaller (if none is, of
all of them); candidates tied with it on speed (interval reaching below 1 + 3%) count as equally fast
and the most faithful of those (max abs error within 1.25x of the smallest) wins, then the smallest file. `prefer="speed"` drops the size floor, `prefer="size"` keeps the
smallest (files within 5% count as equal, then the fastest). If none qualifies, the original is written
unchanged. If none even meets the tolerance, nothing is written unless `force`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from edgeslim import resources
from edgeslim.devices import load_device
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.measure.arena import plan_activation_arena
from edgeslim.measure.decide import Option, choose_option
from edgeslim.measure.device_clock import EstimatedClock
from edgeslim.measure.fidelity import Tolerance
from edgeslim.measure.latency import Latency, interleaved_times, percentiles
from edgeslim.measure.source import file_bytes
from edgeslim.onnxkit.bnfold import fold_into_convs
from edgeslim.onnxkit.graph import name_nodes, op_counts, remove_dead, save, sort_topologically
from edgeslim.onnxkit.inputs import input_specs, make_feeds
from edgeslim.onnxkit.lazy import Spill, stream_cosine, subset
from edgeslim.onnxkit.load import Loaded, load_and_repair, read_onnx
from edgeslim.onnxkit.patterns import fuse_hardswish
from edgeslim.onnxkit.session import kernel_signature, ort_optimize, run_into, session
from edgeslim.onnxkit.shapes import infer_shapes
from edgeslim.onnxopt import candidates as cands
from edgeslim.quant.device_choice import decided_by, timed_here
from edgeslim.quant.int8_plan import Int8Options
from edgeslim.untrusted import about

SYNTHETIC_WARNING = ("no --inputs given: calibration and checks use synthetic inputs from the declared "
                     "shapes. ACCURACY IS NOT CHECKED, only closeness to the original on random data; "
                     "pass --inputs INPUTS.npz with real inputs")


@dataclass(config=ConfigDict(arbitrary_types_allowed=True, extra="forbid"))
class OptimizeConfig:
    """Everything `edgeslim optimize` / `api.optimize` takes, validated once (pydantic): the CLI builds it
    from its options. Units: seconds, dB, elements; `tol` is the fidelity tolerance (`tol_given`: the user
    set it, so a candidate that breaks it is refused rather than skipped)."""

    model: Path
    out: Path
    calib: Path | None = None
    shapes: list[str] = field(default_factory=list)      # "name=1,3,224,224"
    samples: int = 32                                     # feeds used for calibration and checks
    seed: int = 0
    tol: Tolerance = field(default_factory=Tolerance)
    tol_given: bool = False                               # the user set the tolerance: refuse if unmet
    candidates: tuple[str, ...] = cands.ALL
    exclude_ops: set[str] = field(default_factory=set)
    exclude_nodes: set[str] = field(default_factory=set)
    sqnr_db: float = 0.0                                  # extra float fallback under this layer SQNR, dB (0: off)
    weight_min_elements: int = 1024                       # weight-only storage for tensors this large
    max_slowdown: float = 0.05                            # median time ratio may exceed 1 by this fraction
    prefer: Literal["balanced", "size", "speed"] = "balanced"  # see the module docstring
    min_shrink: float = 1.8                               # balanced: the size goal, original / candidate
    rewrites: bool = True                                 # BatchNorm/affine folding, hard-swish fusion
    int8: Int8Options | None = None                       # INT8 techniques; None: all on, target from tol
    ablation: bool = False                                # also time int8-qdq with its choices undone
    bench_seconds: float = 8.0                            # wall time for all latency runs together, s
    threads: int = 1
    device: str = "host"                                  # device profile for the energy estimate
    force: bool = False


def _int8_options(cfg: OptimizeConfig) -> Int8Options:
    """The INT8 plan's settings: the config's, with the fidelity target a little inside the tolerance
    (30% of its slack), so the candidate's own check against the tolerance passes with a margin."""
    base = cfg.int8 or Int8Options()
    mc = cfg.tol.min_cosine
    target = 1 - 0.7 * (1 - mc) if mc is not None else base.target_cosine
    return replace(base, target_cosine=target, exclude_ops=frozenset(cfg.exclude_ops) | base.exclude_ops,
                   exclude_nodes=frozenset(cfg.exclude_nodes) | base.exclude_nodes, threads=cfg.threads)


def _device_clock(cfg: OptimizeConfig, feed: dict) -> EstimatedClock | None:
    """The cost-model clock of `cfg.device` when this host cannot time it (`quant.device_choice`), else None."""
    dev = load_device(cfg.device)
    return None if timed_here(dev) else EstimatedClock(dev, {k: list(np.shape(v)) for k, v in feed.items()})


def _check_device(device: str) -> None:
    load_device(device)  # raises EdgeslimError with the valid names


MAX_HELD_OUT = 512  # held-out samples compared at most (each candidate runs on all of them)


@dataclass(frozen=True)
class Split:
    """One seeded split of the given samples (indices into them, sorted)."""

    given: int
    calibration: list[int]
    held_out: list[int]
    note: str  # how many of each and why, for the report

    def as_dict(self) -> dict:
        return {"given": self.given, "calibration": self.calibration, "held_out": self.held_out,
                "calibration_count": len(self.calibration), "held_out_count": len(self.held_out), "note": self.note}


def split_samples(n: int, samples: int, seed: int) -> Split:
    """Split `n` samples once, with `seed`: a held-out part of at least a quarter of them (at least one)
    for fidelity, and up to `samples` of the rest to calibrate on. Disjoint whenever n >= 2. With a single
    sample there is nothing to hold out: calibration and fidelity share it, and the note says so."""
    if n < 2:
        return Split(n, list(range(n)), list(range(n)), f"only {n} sample: fidelity is measured on the sample the "
                     "INT8 candidates calibrated on (give more samples for a held-out check)")
    order = np.random.default_rng(seed).permutation(n)
    n_cal = min(samples, n - max(1, n // 4))
    cal, rest = sorted(int(i) for i in order[:n_cal]), sorted(int(i) for i in order[n_cal:])
    held = rest[:MAX_HELD_OUT]
    why = (f"{n} samples: {len(cal)} calibrate (--samples {samples}), {len(held)} held out for fidelity"
           + (f"; {len(rest) - len(held)} not used (at most {MAX_HELD_OUT} are compared)" if len(rest) > len(held)
              else ""))
    return Split(n, cal, held, why)


def _feeds(cfg: OptimizeConfig, specs: list) -> tuple[Sequence[dict], list[str]]:
    """All the feeds of --inputs (the measurement core's inputs; they stay on disk and are read one at a
    time, `onnxkit.lazy`), or `samples` + a quarter synthetic ones with the loud warning. Memory is
    checked per feed (`edgeslim.resources.check_calibration_memory`): calibration holds one feed's activations,
    whatever the number of samples."""
    n = 0 if cfg.calib is not None else cfg.samples + max(1, cfg.samples // 4)
    fd = make_feeds(specs, cfg.calib, cfg.shapes, n=n, seed=cfg.seed)
    resources.check_calibration_memory(lambda: plan_activation_arena(cfg.model, reorder=False).naive_bytes,
                                Path(cfg.model).name, "give --inputs samples of batch 1")
    return fd.feeds, (fd.warnings if fd.source == "inputs" else [SYNTHETIC_WARNING, *fd.warnings])


def _optimised(model: onnx.ModelProto, notes: list[str], rewrites: bool = True) -> onnx.ModelProto:
    """ORT offline optimisation, dead-node removal, (rewrites:) BatchNorm and constant Mul/Add folded
    into convs and decomposed hard-swish fused (ORT misses both when constants sit in Constant nodes or
    come first), shape inference, node names."""
    try:
        base = ort_optimize(model)
    except Exception as e:
        base = model
        notes.append(f"ORT offline optimisation failed ({cands._first_line(e)}): skipped")
    dead = remove_dead(base)
    if dead:
        notes.append(f"removed {dead} dead nodes")
    if rewrites:
        a = fold_into_convs(base)
        h = fuse_hardswish(base)
        b = fold_into_convs(base)
        if a["batchnorm"] + b["batchnorm"] + a["affine"] + b["affine"] + h:
            notes.append(f"folded {a['batchnorm'] + b['batchnorm']} BatchNorm and {a['affine'] + b['affine']} "
                         f"constant Mul/Add into convs, fused {h} decomposed hard-swish")
    base, inferred = infer_shapes(base)  # value_info helps the quantizers; symbolic dims may stay
    if not inferred:
        notes.append("shape inference could not resolve this graph: continuing without it")
    name_nodes(base)
    return base


def _base(src: Path, loaded: Loaded, feeds: Sequence[dict], ref: Sequence[list], cfg: OptimizeConfig,
          wd: Path) -> tuple[Loaded, onnx.ModelProto, onnx.ModelProto, onnx.ModelProto | None]:
    """(loaded, repaired at the source opset, INT8 base, FP base or None when it is the INT8 base).

    The opset upgrade is only for per-channel INT8: the FP32/FP16 candidates start from the source opset,
    because converted ops can run slower (measured ~2-4% on PP-OCRv4 det). An upgrade that changes the
    outputs is undone for everything.
    """
    rp = wd / "repaired.onnx"
    save(loaded.model, rp)
    sess = session(rp, threads=cfg.threads)
    cos, finite = stream_cosine((r, sess.run(None, f)) for r, f in zip(ref, feeds))
    if cos < 0.9999 or not finite:
        loaded = load_and_repair(src, upgrade=False)
        loaded.notes.append("opset upgrade changed the outputs: kept the original opset")
    base = _optimised(loaded.model, loaded.notes, cfg.rewrites)
    if loaded.opset == loaded.source_opset:
        return loaded, loaded.model, base, None
    plain = load_and_repair(src, upgrade=False).model
    return loaded, plain, base, _optimised(plain, [], cfg.rewrites)


def _choose(built: list[cands.GraphCandidate], times: dict[str, list[float]], orig_size: int,
            cfg: OptimizeConfig) -> tuple[cands.GraphCandidate | None, str]:
    """Apply the rule (module docstring). None means: write the original unchanged."""
    usable = [c for c in built if c.usable and not c.ablation]
    opts = [Option(c.name, c.size, True, times[c.name], kernels=kernel_signature(c.file),
                   error=c.fid.max_abs if c.fid is not None else None) for c in usable]
    best = choose_option(opts, times["original"], orig_size, prefer=cfg.prefer,  # type: ignore[arg-type]
                  min_shrink=cfg.min_shrink, max_slowdown=cfg.max_slowdown)
    for c, o in zip(usable, opts):
        c.why = o.why
        if "slower than the original" in o.why:
            c.status = "rejected: " + o.why.removeprefix("lost: ")
    if best is not None:
        c = next(c for c in usable if c.name == best.name)
        fid = f"; on {c.fid.samples} held-out samples: {cfg.tol.show(c.fid)}" if c.fid is not None else ""
        return c, f"{c.name}: {best.why.removeprefix('won: ')}{fid}"
    if usable:
        return None, ("no candidate within tolerance is both smaller and not slower than the original: "
                      "the original is written unchanged")
    broken = cfg.tol_given and any(c.status.startswith("rejected") for c in built)
    if not cfg.force and not broken:
        return None, "no candidate could be built within tolerance: the original is written unchanged"
    closest = max((c for c in built if c.fid is not None and not c.ablation), key=lambda c: c.fid.cosine if c.fid else 0.0,
                  default=None)
    if not cfg.force or closest is None:
        raise EdgeslimError(
            "no candidate meets the tolerance (" + "; ".join(f"{c.name} {c.status}" for c in built)
            + f"); {cfg.out} not written" + (" (--force writes the closest one)" if closest is not None else ""))
    return closest, f"{closest.name}: FORCED although it breaks the tolerance ({closest.status})"


def _deploy(path: Path, device: str, shapes: dict[str, list[int]]) -> tuple[int | None, dict | None]:
    """(arena bytes, {mj, method}) of the measurement core for `path` at `shapes` on `device`."""
    from edgeslim.measure.fields import arena_fields, energy_fields

    proto = read_onnx(path)
    e = energy_fields(proto, load_device(device), None, shapes)
    energy = None if e.get("energy_mj") is None else {"mj": e["energy_mj"], "method": e["energy_method"]}
    return arena_fields(proto, path, shapes).get("arena_bytes"), energy


def _side(src: Path, out_path: Path, size: tuple[int, int], ops: dict[str, int] | None, name: str,
          lat: dict[str, Latency], shapes: dict[str, list[int]], device: str) -> dict[str, dict]:
    before = op_counts(onnx.load(str(src), load_external_data=False))
    a0, e0 = _deploy(src, device, shapes)
    a1, e1 = _deploy(out_path, device, shapes)
    return {
        "original": {"size_bytes": size[0], "ops": before, "latency": lat["original"].as_dict(),
                     "arena_bytes": a0, "energy": e0},
        "optimised": {"size_bytes": size[1], "ops": ops or before, "latency": lat[name].as_dict(),
                      "arena_bytes": a1, "energy": e1, "candidate": name},
    }


def optimize_onnx(cfg: OptimizeConfig) -> dict:
    """Run the job; writes `cfg.out` unless refused. Returns everything the report shows (JSON-able)."""
    import onnxruntime as ort

    _check_device(cfg.device)
    bad = [c for c in cfg.candidates if c not in cands.ALL + cands.ABLATION]
    if bad:
        raise EdgeslimError(f"unknown candidate {', '.join(bad)}; valid: {', '.join(cands.ALL)}")
    ort.set_default_logger_severity(3)  # the quantizer's own sessions warn about every folded initializer
    src = Path(cfg.model)
    with about(src):  # what ONNX / ONNX Runtime refuse in the original: one line naming it
        loaded = load_and_repair(src)
        specs = input_specs(loaded.model)
        all_feeds, warnings = _feeds(cfg, specs)
        split = split_samples(len(all_feeds), cfg.samples, cfg.seed)
        feeds, held = subset(all_feeds, split.calibration), subset(all_feeds, split.held_out)
        orig_sess = session(src, threads=cfg.threads)
        out_names = [o.name for o in orig_sess.get_outputs()]
        ref = Spill()  # the original's outputs on every calibration feed, on disk
        run_into(orig_sess, feeds, ref)
        held_ref = Spill()  # and on the held-out feeds
        run_into(orig_sess, held, held_ref)
        if len(all_feeds) < 2:
            warnings.append(split.note)
    orig_size = file_bytes(src)
    with cands.workdir() as td:
        wd = Path(td)
        loaded, plain, base, base_fp = _base(src, loaded, feeds, ref, cfg, wd)
        dev_clock = _device_clock(cfg, feeds[0])  # speed decisions for another device: its cost model
        ctx = cands.CandidateContext(plain, base, feeds, ref, out_names, cfg.tol, set(cfg.exclude_ops),
                            set(cfg.exclude_nodes), cfg.sqnr_db, cfg.weight_min_elements, wd, base_fp=base_fp,
                            int8=_int8_options(cfg), clock=dev_clock, check_feeds=held, check_ref=held_ref)
        names = list(cfg.candidates) + [a for a in cands.ABLATION if cfg.ablation and a not in cfg.candidates]
        built = [cands.evaluate_candidate(n, ctx, cfg.threads) for n in names]
        # a fresh session for the original too, so that every model is timed from the same memory state
        timed = [c for c in built if c.usable or (c.ablation and c.fid is not None)]
        sessions = {"original": session(src, threads=cfg.threads),
                    **{c.name: session(c.file, threads=cfg.threads) for c in timed}}
        times = interleaved_times(sessions, dict.fromkeys(sessions, feeds[0]), seconds=cfg.bench_seconds)
        pick = times if dev_clock is None else dev_clock.times(
            {"original": loaded.model.SerializeToString(), **{c.name: c.file.read_bytes() for c in timed}})
        chosen, reason = _choose(built, pick, orig_size, cfg)
        reason += f" [{decided_by(load_device(cfg.device))}]"
        if chosen is not None and chosen.name not in times:  # forced: time it against the original
            pair = {"original": sessions["original"], chosen.name: session(chosen.file, threads=cfg.threads)}
            times.update(interleaved_times(pair, dict.fromkeys(pair, feeds[0]), seconds=cfg.bench_seconds / 2))
        batch = int(next(iter(feeds[0].values())).shape[0]) if feeds[0] and next(iter(feeds[0].values())).ndim else 1
        lat = {k: percentiles(v, batch, cfg.threads) for k, v in times.items()}
        if chosen is not None and reason.startswith(f"{chosen.name}: FORCED"):
            warnings.append(reason)
        if chosen is not None:
            chosen.status = "chosen"
            out_path, out_bytes = chosen.file, _sorted_bytes(chosen.file)
        else:  # the original, in one file (external data folded in)
            out_path = src
            out_bytes = src.read_bytes() if orig_size == src.stat().st_size else loaded.model.SerializeToString()
        name = chosen.name if chosen is not None else "original"
        shapes = {k: list(v.shape) for k, v in feeds[0].items()}
        side = _side(src, out_path, (orig_size, len(out_bytes)), chosen.ops if chosen else None, name, lat,
                     shapes, cfg.device)
        write_bytes(Path(cfg.out), out_bytes)
    return {
        "model": str(src), "output": str(cfg.out), "chosen": name, "reason": reason,
        "opset": {"source": loaded.source_opset, "used": loaded.opset},
        "inputs": {s.name: s.show() for s in specs}, "feeds": len(all_feeds),
        "samples": {**split.as_dict(), "fidelity_on": "held_out"},
        "data": "calibration" if cfg.calib is not None else "synthetic",
        "tolerance": vars(cfg.tol), "device": cfg.device, "threads": cfg.threads,
        "notes": loaded.notes, "warnings": warnings,
        "candidates": [{
            "name": c.name, "about": cands.ABOUT[c.name], "status": c.status, "why": c.why, "notes": c.notes,
            "size_bytes": c.size or None,
            "latency_ms_p50": lat[c.name].p50_ms if c.name in lat else None,
            "latency_ms_p90": lat[c.name].p90_ms if c.name in lat else None,
            **(c.fid.as_dict() if c.fid else {}),
        } for c in built],
        "int8_plan": ctx.plan.report() if ctx.plan is not None else None,
        "prefer": cfg.prefer,
        "original": {"size_bytes": orig_size, "latency_ms_p50": lat["original"].p50_ms,
                     "latency_ms_p90": lat["original"].p90_ms},
        "side_by_side": side,
        "peak_rss_bytes": resources.peak_rss(),  # {self, children}: calibration streams, so it follows the batch
    }


def _sorted_bytes(path: Path) -> bytes:
    """The file's bytes with its nodes in topological order: ORT's quantizers can leave a node after an
    `If` whose body reads it (silero-vad's op15 export), which ONNX Runtime runs but the ONNX checker, and
    so `edgeslim measure` on the written file, refuses."""
    data = path.read_bytes()
    m = onnx.load_from_string(data)
    return m.SerializeToString() if sort_topologically(m.graph) else data
