"""Deployment figures for `edgeslim measure`: PyTorch eager vs ONNX Runtime latency, a chosen batch,
process peak RSS, the fit on a device (flash, arena) and energy per inference (measured or estimated).

Latency: warm-up, then timed runs, interleaved between PyTorch and ONNX Runtime so machine load hits
both alike; p50/p90/p99/mean in ms per call (per batch for batch > 1).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim.measure.latency import Latency, percentiles
from edgeslim.onnxkit.session import session


def side_by_side_latency(net: nn.Module | None, onnx_path: Path, sample: np.ndarray, runs: int = 200,
                         warmup: int = 20, threads: int = 1, max_seconds: float = 5.0) -> dict[str, Latency]:
    """{"onnxruntime": Latency, "torch": Latency (when `net` is given)} measured interleaved."""
    sess = session(onnx_path, threads=threads)
    feed = {sess.get_inputs()[0].name: sample}
    x = torch.from_numpy(sample)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if net is not None:
            net = net.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                sess.run(None, feed)
                if net is not None:
                    net(x)
            t_ort: list[float] = []
            t_pt: list[float] = []
            start = time.perf_counter()
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feed)
                t_ort.append(time.perf_counter() - t0)
                if net is not None:
                    t0 = time.perf_counter()
                    net(x)
                    t_pt.append(time.perf_counter() - t0)
                if time.perf_counter() - start > max_seconds and len(t_ort) >= 20:
                    break
    finally:
        torch.set_num_threads(old_threads)
    b = int(sample.shape[0])
    out = {"onnxruntime": percentiles(t_ort, b, threads)}
    if t_pt:
        out["torch"] = percentiles(t_pt, b, threads)
    return out


def deploy_extras(onnx_path: Path, net: nn.Module | None, shape: tuple[int, ...], device: str | None = None,
                  threads: int = 1, runs: int = 200, batch: int | None = None, rss: bool = True) -> dict:
    """Fields added to each row of `edgeslim measure` (see the module docstring). Units: bytes, ms, mJ."""
    from edgeslim.measure.device_fit import check_fit
    from edgeslim.measure.energy import energy_for

    rng = np.random.default_rng(0)
    sample = rng.random((1, *shape), dtype=np.float32)
    out: dict = {}
    if net is not None:  # the exported graph must compute what the PyTorch model computes
        from edgeslim.deploy.export import parity

        out.update(parity(net, onnx_path, rng.random((8, *shape), dtype=np.float32)))
    lat = side_by_side_latency(net, onnx_path, sample, runs=runs, threads=threads)
    if "torch" in lat:
        out.update(lat["torch"].as_dict("latency_torch_ms_"))
    if batch and batch > 1:
        lb = side_by_side_latency(net, onnx_path, rng.random((batch, *shape), dtype=np.float32),
                                  runs=max(20, runs // 4), threads=threads)
        out["batch"] = batch
        out.update(lb["onnxruntime"].as_dict(f"latency_b{batch}_ms_"))
        if "torch" in lb:
            out.update(lb["torch"].as_dict(f"latency_torch_b{batch}_ms_"))
    from edgeslim.measure.arena import plan_arena

    plan = plan_arena(onnx_path)
    fit = check_fit(onnx_path, device or "host", arena_bytes=plan.arena_bytes, energy=False)
    e = energy_for(onnx_path, device or "host", sample=sample)
    out.update(
        deploy_device=fit.device, weights_bytes=fit.weights_bytes, flash_bytes=fit.flash_bytes,
        arena_bytes=plan.arena_bytes, arena_bytes_reordered=plan.reordered_arena_bytes,
        naive_activation_bytes=plan.naive_bytes, ram_bytes=fit.ram_bytes, fits_flash=fit.fits_flash,
        fits_ram=fit.fits_ram, fits=fit.fits, energy_mj=round(e.mj, 6), energy_method=e.method,
        energy_latency_ms=None if e.latency_ms is None else round(e.latency_ms, 4),
        macs_by_precision=e.macs_by_precision,
    )
    if rss:
        from edgeslim.measure.memory import inference_peak_rss

        out.update(inference_peak_rss(onnx_path, threads=threads))
    return out
