"""The API's jobs that measure or plan a model for a device without changing its weights (`edgeslim.api`
re-exports each: `api.measure`, `api.check_fit`, `api.plan_arena`, `api.compile_model`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeslim.data import load_task
from edgeslim.errors import EdgeslimError
from edgeslim.measure.battery import LifeOptions

if TYPE_CHECKING:
    from edgeslim.measure.options import MeasureOptions


def measure(paths: Sequence[Path], options: MeasureOptions | None = None, *, task: str | None = None,
            inputs: Path | None = None, life: LifeOptions | None = None, **fields: Any) -> list[dict]:
    """Measure models (ONNX files, model folders or .tflite) with the measurement core (`edgeslim.measure.core`):
    size, counts, latency (ms), arena, flash, fit and energy on `device` (default: this host), accuracy only
    with a `task` (a built-in name or data path), fidelity against a `reference` model. How: `options`
    (`api.MeasureOptions`), or any of its fields as keywords (`runs=50, device="cortex-m4", torch_eager=True,
    rss=True`). `inputs`: an .npz with one array per input name. Several models are timed again together,
    interleaved in one loop (`latency_ms_*`; each alone: `*_alone`). Rows with an energy estimate get
    `battery`, the estimated battery life (`life`, or the profile's battery at 1/s)."""
    from edgeslim.measure.core import measure_models
    from edgeslim.measure.options import measure_options
    from edgeslim.measure.text_encoder import is_text_model

    o = measure_options(options, fields)
    if paths and any(is_text_model(Path(p)) for p in paths):  # text encoders: fidelity to the first, seq 128/32
        from edgeslim.measure.text_encoder import measure_text

        return measure_text([Path(p) for p in paths], task, threads=o.threads)
    life = (life or LifeOptions()).checked()
    t = load_task(task) if task else None
    rows = [m.as_dict() for m in measure_models(list(paths), inputs, o.model_copy(
        update={"task": t, "device": o.device or "host"}))]
    for p, row in zip(paths, rows):  # an Ethos-U profile: Vela's own estimate beside ours
        vela = _vela(Path(p), o.device)
        if vela is not None:
            row["vela"] = vela
    return life.annotate_rows(rows, o.device)


def check_fit(model: Path, device: str = "cortex-m4", arena_bytes: int | None = None, *,
              inputs: Path | None = None, shapes: Sequence[str] = (), life: LifeOptions | None = None) -> dict:
    """Does `model` (ONNX file, model folder or .tflite) fit `device`? Flash for weights + runtime, RAM
    for the activation arena + runtime; estimated latency (ms) and energy (mJ). With `X.onnx` beside
    `X.tflite`, `arena_beside` compares the planner's arena with TFLite Micro's. `battery`: the estimated
    battery life (`life`, or the profile's battery at 1/s; `edgeslim.measure.battery`). Bytes, ms, mJ."""
    from edgeslim.devices import load_device
    from edgeslim.measure.core import measure_model
    from edgeslim.measure.device_fit import device_fit
    from edgeslim.measure.tflite import arena_beside

    life = (life or LifeOptions()).checked()
    m = measure_model(model, inputs, shapes=shapes, device=device, latency=False)
    fit = m.fit
    if arena_bytes is not None or fit is None:
        dev = load_device(device)
        weights = fit.weights_bytes if fit is not None else (m.size_bytes or 0)
        fit = device_fit(dev, weights, arena_bytes or 0, "given" if arena_bytes is not None else "unknown")
        if m.energy.get("energy_mj") is not None:
            fit.energy_mj, fit.energy_method = m.energy["energy_mj"], m.energy["energy_method"]
            fit.latency_ms = m.energy.get("energy_latency_ms")
    beside = arena_beside(model)
    out = {"model": str(model), **fit.as_dict(), "inputs": m.inputs, "input_source": m.input_source,
           "warnings": m.warnings}
    if m.arena.get("arena_note") and arena_bytes is None:
        out["arena_note"] = m.arena["arena_note"]
    row = {**out, **({"arena_beside": beside} if beside else {})}
    if arena_bytes is None and not fit.fits_ram:  # would `export --min-arena` make it fit? (TFLite Micro's arena)
        from edgeslim.litert.min_arena import fit_after_min_arena

        after = fit_after_min_arena(Path(model), row)
        if after is not None:
            row["min_arena"] = after
    vela = _vela(model, device)
    if vela is not None:
        row["vela"] = vela
    return life.annotate_rows([row], device)[0]


def _vela(model: Path, device: str | None) -> dict | None:
    """Vela's estimate (SRAM, flash, cycles, time, CPU fallbacks) when `device` names an Ethos-U configuration."""
    from edgeslim.devices import load_device

    if device is None:
        return None
    dev = load_device(device)
    if not dev.vela:
        return None
    from edgeslim.litert.vela import vela_for_fit

    v = vela_for_fit(Path(model), dev.vela)
    if "sram_bytes" in v:  # the one fit verdict, on Vela's figures
        from edgeslim.measure.device_fit import device_fit

        f = device_fit(dev, v["flash_bytes"], v["sram_bytes"], arena_source="vela")
        v["fits_sram"], v["fits_flash"] = f.fits_ram, f.fits_flash
    return v


def plan_arena(model: Path, fuse_qdq: bool = True, align: int = 16, write_reordered: Path | None = None, *,
               inputs: Path | None = None, shapes: Sequence[str] = (), device: str | None = None) -> Any:
    """Static activation arena plan (buffers, lifetimes, offsets; bytes) of an ONNX file or model folder at
    the shapes of its inputs (`inputs` .npz or `shapes`); with `write_reordered`, also write the model with its
    nodes in the lowest-peak order found; with `device`, `plan.fit` is the RAM verdict on that device."""
    from edgeslim.devices import load_device
    from edgeslim.fsutil import write_bytes
    from edgeslim.measure.arena import plan_activation_arena as plan
    from edgeslim.measure.arena import reorder_model
    from edgeslim.measure.device_fit import device_fit, weights_bytes
    from edgeslim.measure.source import open_model
    from edgeslim.onnxkit.inputs import input_specs, make_feeds
    from edgeslim.onnxkit.load import read_onnx
    from edgeslim.untrusted import about

    with about(model), open_model(model) as src:  # a broken model: one line naming it
        if src.onnx is None:
            raise EdgeslimError(f"{model}: the arena planner takes an ONNX file or a model folder; for a .tflite "
                                "`edgeslim fit` reports TFLite Micro's recorded arena")
        proto = read_onnx(src.onnx)
        fd = make_feeds(input_specs(proto), inputs, shapes or ([] if inputs else src.shapes))
        result = plan(proto, fuse_qdq=fuse_qdq, align=align, shapes=fd.shapes)
        result.warnings = fd.warnings
        if device is not None:
            result.fit = device_fit(load_device(device), weights_bytes(proto), result.arena_bytes).as_dict()
        if write_reordered is not None:
            write_bytes(write_reordered, reorder_model(proto, shapes=fd.shapes)[0].SerializeToString())
    return result


def compile_model(model: Path, out: Path, level: str = "extended", *, inputs: Path | None = None,
            shapes: Sequence[str] = (), device: str | None = None) -> dict:
    """BN folding, constant folding + dead-node removal, then ONNX Runtime offline optimisation at `level`
    (`all` is specific to this CPU); writes `out`, returns node counts, fusions and the parity check of every
    output on the model's inputs (`inputs` .npz or synthetic, `shapes`). With `device`: the compiled model's
    fit and energy there (`fit`)."""
    from edgeslim.deploy.compile import compile_onnx

    res = compile_onnx(Path(model), Path(out), level, inputs=inputs, shapes=shapes, device=device)
    if device is not None:
        res["fit"] = check_fit(Path(out), device, inputs=inputs, shapes=shapes)
    return res
