"""The measurement core: any model + its inputs (+ a task, a reference, a device) -> one `Measurement`.

Every command and the pipeline measure through `measure_model`, and compare models through `Measurer.time_together`
(interleaved in one loop, `measure.latency`). What it gives, with units in the names:
- latency in ONNX Runtime (or LiteRT for .tflite): p50/p90/p99/mean ms per call, threads, batch; with a
  PyTorch model also PyTorch eager, timed interleaved with ONNX Runtime;
- size on disk (external data included), parameters and MACs (PyTorch when there is a model, else the graph);
- activation arena (the static planner; a lower bound with If/Loop/Scan or unknown shapes), flash, the fit
  verdict for the device (`measure.device_fit`), energy per inference with its method label
  (`measured:rapl` on this host where readable, else `estimated:calibrated@<device> (LOO error ...)` or
  `estimated:uncalibrated@<device>`; on this host the static term rests on the measured latency);
- accuracy only with a task; fidelity (cosine per output, max/mean abs error, top-1 agreement where outputs
  are scores) against a reference model when one is given.
Inputs: an .npz (one array per input name) or synthetic feeds from the declared shapes and `--shape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.devices import DEFAULT_DEVICE, Device, load_device
from edgeslim.errors import EdgeslimError
from edgeslim.measure.decide import InterleavedClock
from edgeslim.measure.device_fit import FitReport, device_fit, weights_bytes
from edgeslim.measure.fidelity import Fidelity, compare_outputs, run_all
from edgeslim.measure.fields import arena_fields, energy_fields, graph_counts
from edgeslim.measure.latency import Latency, interleaved_latency, onnx_interleaved, ort_runner
from edgeslim.measure.options import MeasureOptions, measure_options
from edgeslim.measure.source import (
    Source,
    check_task_input,
    file_bytes,
    fixed_batch,
    open_model,
)
from edgeslim.onnxkit.inputs import Feed, Feeds, at_batch, input_specs, make_feeds
from edgeslim.onnxkit.load import read_onnx
from edgeslim.onnxkit.session import onnx_accuracy, session
from edgeslim.untrusted import about

FIDELITY_FEEDS = 8  # synthetic feeds compared against a reference model (given inputs or a task: all of them)
FIDELITY_BATCH = 64  # samples run together when every input has a symbolic leading (batch) dim


@dataclass
class Measurement:
    """One model, measured. `as_dict` flattens it into the keys results.json and `--json` use."""

    name: str
    runtime: str = "onnxruntime"                     # or "litert"
    inputs: dict[str, str] = field(default_factory=dict)  # name -> "float32[1, 3, 32, 32]"
    input_source: str = "declared"                   # inputs (.npz) | shape | declared | task
    latency: Latency | None = None                   # ms per call at `latency.batch`
    latency_torch: Latency | None = None             # PyTorch eager, interleaved with the above
    batch_latency: dict[str, Latency] = field(default_factory=dict)  # "onnxruntime"/"torch" at `batch`
    batch: int | None = None
    size_bytes: int | None = None                    # the stored artifact (external data included)
    onnx_size_bytes: int | None = None
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None                          # per sample
    counts_from: str = ""                            # "pytorch" | "graph" | ""
    arena: dict[str, Any] = field(default_factory=dict)  # arena_bytes, arena_bytes_reordered, ... (bytes)
    fit: FitReport | None = None
    energy: dict[str, Any] = field(default_factory=dict)  # energy_mj, energy_method, energy_latency_ms, ...
    accuracy: float | None = None                    # top-1, 0-1, only with a task
    accuracy_samples: int | None = None
    fidelity: Fidelity | None = None
    reference: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # parity, peak RSS, TFLite Micro arena, ...
    warnings: list[str] = field(default_factory=list)
    latency_alone: Latency | None = None             # when `latency` was re-timed with other models
    timing: str = ""                                 # how `latency` was timed, when with other models
    runner: Any = field(default=None, repr=False)    # one inference, for timing it beside other models

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "runtime": self.runtime, "accuracy": self.accuracy}
        if self.accuracy_samples is not None:
            d["accuracy_samples"] = self.accuracy_samples
        d.update(params=self.params, nonzero_params=self.nonzero_params, macs=self.macs, size_bytes=self.size_bytes)
        if self.onnx_size_bytes is not None:
            d["onnx_size_bytes"] = self.onnx_size_bytes
        if self.counts_from:
            d["counts_from"] = self.counts_from
        if self.latency is not None:
            d.update(self.latency.as_dict())
            d.update(latency_threads=self.latency.threads, latency_batch=self.latency.batch,
                     latency_runs=self.latency.runs)
        if self.latency_torch is not None:
            d.update(self.latency_torch.as_dict("latency_torch_ms_"))
        if self.batch_latency and self.batch:
            d["batch"] = self.batch
            if "onnxruntime" in self.batch_latency:
                d.update(self.batch_latency["onnxruntime"].as_dict(f"latency_b{self.batch}_ms_"))
            if "torch" in self.batch_latency:
                d.update(self.batch_latency["torch"].as_dict(f"latency_torch_b{self.batch}_ms_"))
        d.update(self.arena)
        if self.fit is not None:
            f = self.fit.as_dict()
            d.update(deploy_device=f["device"], weights_bytes=f["weights_bytes"], flash_bytes=f["flash_bytes"],
                     flash_available=f["flash_available"], ram_bytes=f["ram_bytes"],
                     ram_available=f["ram_available"], arena_source=f["arena_source"], fits_flash=f["fits_flash"],
                     fits_ram=f["fits_ram"], fits=f["fits"], fit_reasons=f["reasons"])
        d.update(self.energy)
        if self.fidelity is not None:
            d["fidelity"] = {"reference": self.reference, **self.fidelity.as_dict()}
        d.update(self.extra)
        d["inputs"] = self.inputs
        d["input_source"] = self.input_source
        d["warnings"] = self.warnings
        if self.latency_alone is not None:  # `latency_ms_*` above: timed with the other models
            d.update({f"{k}_alone": v for k, v in self.latency_alone.as_dict().items()})
            d["latency_timing"] = self.timing
        return d


def resolve_feeds(specs: list, inputs: str | Path | None, shapes: Sequence[str], task: Any, n: int,
                  seed: int) -> Feeds:
    """Feeds for measuring: --inputs, else the task's test samples (one input), else synthetic."""
    if inputs is None and task is not None and not shapes and len(specs) == 1:
        s = specs[0]
        b = fixed_batch(s) or 1
        x = task.x_test.astype(s.dtype)
        feeds = [{s.name: x[i : i + b]} for i in range(0, min(len(x), n * b), b)]
        if feeds and len(feeds[0][s.name]) == b:
            return Feeds(feeds, "task", [])
    return make_feeds(specs, inputs, shapes, n=n, seed=seed)


def measure_model(model: str | Path, inputs: str | Path | None = None, options: MeasureOptions | None = None,
                  **fields: Any) -> Measurement:
    """Measure one model (ONNX path, edgeslim model folder or .tflite); see the module docstring. How: the
    `MeasureOptions` (`options`, with any of its fields given as keywords on top, e.g. `runs=50`); inputs
    with a symbolic leading dim are tiled to `batch`. `inputs`: an .npz with one array per input name."""
    o = measure_options(options, fields)
    runs = o.runs if o.latency else 0
    with about(model), open_model(model, trust_pickle=o.trust_pickle) as src:  # a broken model: one line naming it
        if src.kind == "tflite":
            from edgeslim.measure.tflite import measure_tflite

            return measure_tflite(src, inputs, task=o.task, device=o.device, threads=o.threads, runs=runs,
                                  max_seconds=o.max_seconds, deploy=o.deploy, seed=o.seed)
        net = o.torch_model if o.torch_model is not None else src.net
        m = Measurement(name=str(model))
        _measure_onnx(m, src, net, inputs, o.model_copy(update={"runs": runs}))
        return m


def _measure_onnx(m: Measurement, src: Source, net: Any, inputs: str | Path | None, o: MeasureOptions) -> None:
    shapes, task, device, reference, threads = o.shapes, o.task, o.device, o.reference, o.threads
    if not shapes and inputs is None and task is None:
        shapes = tuple(src.shapes)  # a stage of an ONNX run: its sample shape where the file keeps symbolic dims
    batch, runs, max_seconds, deploy, torch_eager = o.batch, o.runs, o.max_seconds, o.deploy, o.torch_eager
    rss, size_path, seed, predictions = o.rss, o.size_path, o.seed, o.predictions
    assert src.onnx is not None
    where = str(src.path)
    proto = read_onnx(src.onnx)
    specs = input_specs(proto)
    if task is not None:
        check_task_input(specs, task, where)
    fd = resolve_feeds(specs, inputs, shapes, task, FIDELITY_FEEDS if reference else 1, seed)
    m.input_source, m.warnings = fd.source, list(fd.warnings)
    m.inputs = {s.name: f"{fd.feeds[0][s.name].dtype}{list(fd.feeds[0][s.name].shape)}" for s in specs}
    sess = session(src.onnx, threads=threads)
    run_all(sess, fd.feeds[:1], where)  # a model that fails on its inputs says so in one line
    feed = fd.feeds[0]
    # latency: ONNX Runtime (and PyTorch eager, interleaved)
    runners: dict[str, Any] = {"onnxruntime": ort_runner(sess, feed)}
    m.runner = runners["onnxruntime"]
    b1 = _lead(feed, specs)
    if torch_eager and net is not None:
        runners["torch"] = _torch_runner(net, feed)
        from edgeslim.deploy.export import export_parity

        x = _task_or_random(task, src, 8, seed)
        m.extra.update(export_parity(net, src.onnx, x))
    if runs:
        lat = _time(runners, runs, max_seconds, threads, b1)
        m.latency, m.latency_torch = lat["onnxruntime"], lat.get("torch")
    if runs and batch and batch > 1:
        if any(fixed_batch(s) is not None for s in specs):
            m.warnings.append(f"the model has a fixed batch ({fixed_batch(specs[0])}): --batch {batch} not timed")
        else:
            fb = at_batch(feed, specs, batch)
            br: dict[str, Any] = {"onnxruntime": ort_runner(sess, fb)}
            if "torch" in runners:
                br["torch"] = _torch_runner(net, fb)
            run_all(sess, [fb], where)
            m.batch, m.batch_latency = batch, _time(br, max(20, runs // 4), max_seconds, threads, batch)
    # size and counts
    m.size_bytes = file_bytes(size_path or src.size_path)
    m.onnx_size_bytes = file_bytes(src.onnx)
    if net is not None:
        from edgeslim.models.counts import count_macs, count_params

        m.params, m.nonzero_params = count_params(net)
        in_shape = tuple(task.input_shape) if task is not None else tuple(feed[specs[0].name].shape[1:])
        m.macs, m.counts_from = count_macs(net, in_shape), "pytorch"
    else:
        m.params, m.nonzero_params, m.macs = graph_counts(proto, fd.shapes)
        m.counts_from = "graph"
        if m.macs is None:
            m.warnings.append("MACs not counted: no MAC layer with known shapes outside If/Loop/Scan bodies")
    # accuracy (only with a task) and fidelity (only with a reference)
    if task is not None:
        kept: list[np.ndarray] = []
        acc = onnx_accuracy(sess, task.x_test, np.asarray(task.y_test), where=where, num_classes=task.num_classes,
                            scores=kept)
        m.accuracy, m.accuracy_samples = round(acc, 6), len(task.y_test)
        if predictions is not None and kept:  # kept so compression's effect on behaviour can be shown
            from edgeslim.measure.predictions import save_predictions

            save_predictions(predictions, kept[0], np.asarray(task.y_test), task.num_classes)
    if reference is not None:  # every given sample (or test sample), batched where the batch dim is free
        m.reference = str(reference)
        n_fid = len(task.x_test) if task is not None and inputs is None else (0 if inputs is not None
                                                                               else FIDELITY_FEEDS)
        ff = resolve_feeds(specs, inputs, shapes, task, n_fid, seed).feeds if n_fid != 1 else fd.feeds
        m.fidelity = replace(_fidelity(sess, reference, batched(ff, specs), where), samples=len(ff))
    if deploy:
        dev = load_device(device or DEFAULT_DEVICE)
        m.arena = arena_fields(proto, src.onnx, fd.shapes)
        m.fit = device_fit(dev, weights_bytes(proto), m.arena.get("arena_bytes") or 0)
        if m.arena.get("arena_lower_bound"):
            m.fit.reasons.append("the arena is a lower bound (see arena_note): RAM may not suffice")
        host_runner = runners["onnxruntime"] if dev.name == "host" else None
        measured = m.latency.p50_ms if host_runner is not None and m.latency is not None else None
        m.energy = energy_fields(proto, dev, host_runner, fd.shapes, threads, measured_ms=measured)
        if m.energy.get("energy_mj") is not None and m.fit is not None:
            m.fit.energy_mj, m.fit.energy_method = m.energy["energy_mj"], m.energy["energy_method"]
            m.fit.latency_ms = m.energy.get("energy_latency_ms")
    if rss:
        from edgeslim.measure.memory import inference_peak_rss

        m.extra.update(inference_peak_rss(src.onnx, threads=threads, feed=feed))


def _lead(feed: Feed, specs: list) -> int:
    a = feed[specs[0].name] if specs else None
    return int(a.shape[0]) if a is not None and a.ndim else 1


def _time(runners: dict[str, Any], runs: int, max_seconds: float, threads: int, batch: int) -> dict[str, Latency]:
    """The one timer over `runners`; PyTorch ones run in inference mode with `threads` threads."""
    if "torch" not in runners:
        return interleaved_latency(runners, rounds=runs, max_seconds=max_seconds, warmup=10, threads=threads,
                                   batch=batch)
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return interleaved_latency(runners, rounds=runs, max_seconds=max_seconds, warmup=10, threads=threads,
                                       batch=batch)
    finally:
        torch.set_num_threads(old)


def _torch_runner(net: Any, feed: Feed) -> Any:
    import torch

    xs = [torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()]
    return lambda: net(*xs)


def _task_or_random(task: Any, src: Source, n: int, seed: int) -> np.ndarray:
    if task is not None:
        return task.x_test[:n].astype(np.float32)
    shape = tuple((src.spec or {}).get("input_shape", ()))
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def batched(feeds: Sequence[Feed], specs: list, size: int = FIDELITY_BATCH) -> Sequence[Feed]:
    """`feeds` joined `size` at a time along axis 0 when every input has a symbolic leading dim (the
    outputs are then the same, in fewer runs); else as they are."""
    if len(feeds) < 2 or not specs or any(not s.dims or isinstance(s.dims[0], int) for s in specs):
        return feeds
    if any(np.ndim(f[s.name]) == 0 for f in feeds for s in specs):
        return feeds
    return [{s.name: np.concatenate([f[s.name] for f in feeds[i : i + size]]) for s in specs}
            for i in range(0, len(feeds), size)]


def _fidelity(sess: Any, reference: str | Path, feeds: Sequence[Feed], where: str) -> Fidelity:
    with open_model(reference) as ref:
        if ref.onnx is None:
            raise EdgeslimError(f"{reference}: a reference must be an ONNX file or a model folder")
        rs = session(ref.onnx)
        want = sorted(i.name for i in rs.get_inputs())
        if want != sorted(feeds[0]):
            raise EdgeslimError(f"{reference}: the reference takes inputs {', '.join(want)} but the model takes "
                                f"{', '.join(sorted(feeds[0]))}")
        names = [o.name for o in sess.get_outputs()]
        if len(rs.get_outputs()) != len(names):
            raise EdgeslimError(f"{reference}: the reference has {len(rs.get_outputs())} outputs, the model "
                                f"{len(names)}")
        got = run_all(sess, feeds, where)
        ref_out = run_all(rs, feeds, str(reference))
        for k, n in enumerate(names):
            if np.asarray(got[0][k]).shape != np.asarray(ref_out[0][k]).shape:
                raise EdgeslimError(f"{reference}: output {k} ('{n}') has shape {list(np.shape(ref_out[0][k]))} "
                                    f"in the reference but {list(np.shape(got[0][k]))} in the model")
        return compare_outputs(names, ref_out, got)


def measure_models(models: Sequence[str | Path], inputs: str | Path | None = None,
                   options: MeasureOptions | None = None, **fields: Any) -> list[Measurement]:
    """`measure_model` on each model, then (for more than one) their latencies timed again together,
    interleaved in one loop (the figure to compare them by; each one's own figure stays as
    `latency_ms_*_alone`). `options`/`fields`: as `measure_model`'s."""
    o = measure_options(options, fields)
    ms = [measure_model(p, inputs, o) for p in models]
    timed = {str(i): m for i, m in enumerate(ms) if m.runner is not None and m.latency is not None}
    if len(timed) > 1:
        runs, threads = o.runs, o.threads
        lat = interleaved_latency({k: m.runner for k, m in timed.items()}, rounds=runs, warmup=10, threads=threads,
                                  max_seconds=o.max_seconds * len(timed))
        for k, m in timed.items():
            assert m.latency is not None
            m.latency_alone, m.latency = m.latency, replace(lat[k], batch=m.latency.batch)
            m.timing = f"interleaved: {len(timed)} models in one loop"
    return ms


def compare_latency(models: Mapping[str, str | Path], feed: Mapping[str, np.ndarray], *, threads: int = 1,
            seconds: float | None = None, rounds: int = 20, per_round: int = 10, warmup: int = 10) -> dict[str, Latency]:
    """Latency of several ONNX models on the same feed, interleaved in one loop (the figure to compare by)."""
    return onnx_interleaved(models, feed, threads=threads, seconds=seconds, rounds=rounds, per_round=per_round,
                            warmup=warmup)


@dataclass
class Measurer:
    """What a pass may ask of the measurement core (`ctx.measure` in a run): a pass that needs a measurement to
    decide (the INT8 format picker) or to report (the early-exit table) asks here instead of timing on its own,
    so every figure comes from the one interleaved timer with the run's threads."""

    threads: int = 1
    device: str | Path | Device | None = None  # the run's device: speed decisions are made for it (`clock`)

    def time_together(self, models: Mapping[str, str | Path], feed: Mapping[str, np.ndarray], **timer: Any
                ) -> dict[str, Latency]:
        """Latency (ms) of ONNX models on one feed, interleaved in one loop (`compare_latency`)."""
        return compare_latency(models, feed, threads=self.threads, **timer)

    def time(self, runners: Mapping[str, Any], **timer: Any) -> dict[str, Latency]:
        """Latency (ms per call) of zero-argument callables, interleaved in one loop (`interleaved_latency`)."""
        return interleaved_latency(runners, threads=self.threads, **timer)

    def clock(self, feed: Mapping[str, np.ndarray], seconds: float = 3.0, min_rounds: int = 15) -> InterleavedClock:
        """A clock for decisions by confidence interval (`measure.decide`): per-round times of serialized
        ONNX models on `feed` and ORT's per-kernel profile, both from the one timer, with the run's threads.
        The INT8 plan (`quant.int8_plan`) and `optimize`'s candidates take it. For a device this host cannot
        time (`devices.timed_here`) it is the device's cost model instead (`measure.device_clock`)."""
        from edgeslim.measure.device_clock import clock_for

        dev = load_device(self.device) if self.device is not None else None
        return clock_for(dev, feed, seconds=seconds, threads=self.threads, min_rounds=min_rounds)  # type: ignore[return-value]
