"""The arena-minimising rewrite of an INT8 `.tflite` for stock TFLite Micro (`export --min-arena`).

Two rewrites of the flatbuffer, both leaving every int8 output bit-identical:
- patch-based execution of the first stage (`edgeslim.litert.patches`): the stage boundary and the patch
  grid are chosen to minimise the estimated arena (planned head + estimated persistent tail: more
  operators cost TFLite Micro tail bytes) with the MACs recomputed in halos at most `max_recompute` of the
  model's MACs;
- operator order: TFLite Micro runs operators in file order; the order search of the ONNX arena planner
  (`edgeslim.onnxkit.op_order`) runs on the file's graph and the operators are renumbered when the
  planned head drops;
- an offline memory plan in the file's metadata (`edgeslim.litert.offline`: in-place ADD, a better
  placement than TFLite Micro's greedy one), written only where it lowers the head.
`prove` then runs both files in TFLite Micro: its recording allocator gives each arena, and the int8
outputs are compared on the given inputs. Sizes in bytes; MACs are multiply-accumulates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.litert import offline
from edgeslim.litert import tfgraph as tg
from edgeslim.litert.patches import grids, patch_stage, stage_cuts

MAX_RECOMPUTE = 0.2  # default: halos may add at most 20% of the model's MACs
FINALISTS = 8  # candidates (by TFLite Micro's greedy plan) rescored with reordering and the offline plan


def _macs(model) -> int:
    sg = model.subgraphs[0]
    return sum(tg.macs(model, sg, op) for op in sg.operators)


def reorder(model) -> tuple[object, str]:
    """The model with its operators in the lowest-peak order found ("" when the file's order is kept)."""
    from edgeslim.onnxkit.op_order import best_order

    sg = model.subgraphs[0]
    nodes, root, size, ins, outs = tg._fake_nodes(model, sg)
    order, method = best_order(nodes, root, size, ins, outs, max_states=2000)
    if order == list(range(len(nodes))) or tg.plan(model, order).head_bytes >= tg.plan(model).head_bytes:
        return model, ""
    sg.operators = [sg.operators[i] for i in order]
    return model, method


def minimise(data: bytes, max_recompute: float = MAX_RECOMPUTE, max_side: int = 4) -> tuple[bytes, dict]:
    """(rewritten `.tflite` bytes, what was done and the planned figures before and after)."""
    model = tg.load(data)
    if len(model.subgraphs) != 1:
        return data, {"applied": False, "reason": "more than one subgraph"}
    base = tg.plan(model)
    macs0 = _macs(model)
    cands: list[tuple[int, int, object, tuple[int, tuple[int, int]] | None, int]] = [
        (base.head_bytes + base.tail_estimate_bytes, 0, tg.load(data), None, 0)]
    for k, boundary in stage_cuts(model):
        for grid in grids(max_side):
            cand = patch_stage(model, k, boundary, grid)
            added = _macs(cand) - macs0
            if added > max_recompute * macs0:
                continue
            p = tg.plan(cand)
            cands.append((p.head_bytes + p.tail_estimate_bytes, len(cands), cand, (k, grid), added))
    # the best few by TFLite Micro's own plan, then rescored with reordering and edgeslim's offline plan
    best = None
    for _, _, cand, patch_, added_ in sorted(cands, key=lambda c: c[:2])[:FINALISTS]:
        cand, method_ = reorder(cand)
        cand, head_, written_ = offline.apply(cand)
        score = head_ + tg.tail_estimate(cand)
        if best is None or score < best[0]:
            best = (score, cand, patch_, added_, method_, head_, written_)
    assert best is not None
    _, new, patch, added, method, offline_head, offline_written = best
    after = tg.plan(new)
    after.head_bytes = offline_head  # TFLite Micro uses the offline plan when the file carries one
    if after.head_bytes + after.tail_estimate_bytes >= base.head_bytes + base.tail_estimate_bytes:
        new, after, patch, added, method, offline_written = tg.load(data), base, None, 0, "", False
    out = tg.dump(new) if (patch or method or offline_written) else data
    report = {
        "applied": bool(patch or method or offline_written), "max_recompute": max_recompute,
        "offline_plan": offline_written, "greedy_head_bytes": tg.plan(new).head_bytes,
        "patch_stage_ops": patch[0] if patch else 0, "patch_grid": list(patch[1]) if patch else None,
        "reorder_method": method or None,
        "macs_plain": macs0, "macs": macs0 + added, "macs_added": added,
        "recompute_fraction": round(added / macs0, 4) if macs0 else 0.0,
        "planned_head_bytes_plain": base.head_bytes, "planned_head_bytes": after.head_bytes,
        "estimated_tail_bytes_plain": base.tail_estimate_bytes, "estimated_tail_bytes": after.tail_estimate_bytes,
        "planned_arena_bytes_plain": base.head_bytes + base.tail_estimate_bytes,
        "planned_arena_bytes": after.head_bytes + after.tail_estimate_bytes,
        "ops_plain": len(base.ops), "ops": len(after.ops),
        "skyline_plain": base.skyline, "skyline": after.skyline,
    }
    return out, report


def prove(plain: bytes | Path, minimised: bytes | Path, x: np.ndarray | None = None,
          y: np.ndarray | None = None, quantize=None) -> dict:
    """TFLite Micro's recorded arenas of both files and their int8 outputs compared on inputs `x` (float,
    quantised with `quantize`, or already int8). With labels `y`: the accuracy of both (TFLite Micro)."""
    from edgeslim.litert.micro import MicroModel

    a, b = MicroModel(plain), MicroModel(minimised)
    out: dict = {"arena_source": "recorded:tflite-micro"}
    if x is not None and len(x):
        xs = [quantize(x[i : i + 1]) if quantize is not None else x[i : i + 1] for i in range(len(x))]
        ra = np.stack([a.invoke_raw(q) for q in xs])
        rb = np.stack([b.invoke_raw(q) for q in xs])
        diff = np.abs(ra.astype(np.int32) - rb.astype(np.int32)).reshape(len(xs), -1).max(1)
        out.update(compared_samples=len(xs), identical_samples=int((diff == 0).sum()),
                   max_abs_diff_steps=int(diff.max()), outputs_identical=bool((diff == 0).all()))
        if y is not None and ra.ndim >= 2:
            yy = np.asarray(y[: len(xs)])
            out["accuracy_plain"] = float((ra.reshape(len(xs), -1).argmax(1) == yy).mean())
            out["accuracy"] = float((rb.reshape(len(xs), -1).argmax(1) == yy).mean())
    pa, pb = a.arena(), b.arena()
    out["tflm_arena_plain"], out["tflm_arena"] = pa.as_dict(), pb.as_dict()
    out["reduction"] = round(1 - pb.total_bytes / pa.total_bytes, 4)
    out["head_reduction"] = round(1 - pb.head_bytes / pa.head_bytes, 4) if pa.head_bytes else 0.0
    return out


def skyline_plot(report: dict, path: Path) -> Path:
    """Bytes alive at each operator, plain vs minimised, as a PNG (the memory skyline)."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from edgeslim.fsutil import write_bytes

    fig, ax = plt.subplots(figsize=(8, 3.2))
    for key, label in (("skyline_plain", "plain"), ("skyline", "--min-arena")):
        s = report[key]
        ax.step(range(len(s)), [v / 1024 for v in s], where="post", label=f"{label} ({len(s)} ops)")
    ax.set_xlabel("operator (execution order)")
    ax.set_ylabel("live activations (KiB)")
    ax.set_title("TFLite Micro live memory per operator (planned)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


PROOF_SAMPLES = 200  # test inputs run through TFLite Micro for the output comparison


def apply_to_file(path: Path, *, x: np.ndarray | None = None, y: np.ndarray | None = None,
                  max_recompute: float = MAX_RECOMPUTE, device: str | None = None) -> dict:
    """Rewrite the INT8 `.tflite` at `path` in place (the plain file is kept as `NAME.plain.tflite`), prove it
    in TFLite Micro on float inputs `x` (labels `y`: accuracy of both), draw `NAME.skyline.png`. Returns the
    report: planned and recorded arenas, MACs added, output identity, estimated latency, file paths."""
    from edgeslim.fsutil import write_bytes
    from edgeslim.litert.interpreter import LiteRTModel

    path = Path(path)
    data = path.read_bytes()
    lm = LiteRTModel(path)
    if not lm.input.quantized:
        from edgeslim.errors import EdgeslimError

        raise EdgeslimError(f"{path}: --min-arena rewrites full-integer INT8 files; add --int8")
    new, rep = minimise(data, max_recompute)
    plain = path.with_name(path.stem + ".plain.tflite")
    write_bytes(plain, data)
    write_bytes(path, new)
    xs = None if x is None else np.asarray(x[:PROOF_SAMPLES], np.float32)
    proof = prove(plain, path, xs, None if y is None else np.asarray(y[:PROOF_SAMPLES]), lm.input.quantize)
    rep.update(proof)
    rec = proof["tflm_arena"]["total_bytes"]
    rep["planner_vs_tflm"] = round(rep["planned_arena_bytes"] / rec - 1, 4)  # planned head + estimated tail
    rep["planner_head_vs_tflm"] = round(rep["planned_head_bytes"] / proof["tflm_arena"]["head_bytes"] - 1, 4)
    rep.update(latency_estimate(rep, device or "cortex-m4"))
    rep["plain_path"], rep["skyline_png"] = str(plain), str(skyline_plot(rep, path.with_suffix(".skyline.png")))
    rep["size_bytes_plain"], rep["size_bytes"] = len(data), len(new)
    return rep


def latency_estimate(report: dict, device: str = "cortex-m4") -> dict:
    """Estimated latency of both files on `device` from its INT8 MAC rate (the device profile's model)."""
    from edgeslim.devices import load_device

    d = load_device(device)
    rate = d.macs_per_second("int8")
    return {"device": d.name, "latency_ms_plain": round(1e3 * report["macs_plain"] / rate, 2),
            "latency_ms": round(1e3 * report["macs"] / rate, 2), "latency_source": f"estimated:{d.name} MAC rate"}


__all__ = ["apply_to_file", "minimise", "prove", "reorder", "skyline_plot", "latency_estimate", "MAX_RECOMPUTE"]


def fit_after_min_arena(model: Path, fit: dict, max_recompute: float = MAX_RECOMPUTE) -> dict | None:
    """For a model that misses its RAM budget: TFLite Micro's recorded arena of the `--min-arena` rewrite and the
    RAM verdict with it. A `.tflite` is rewritten as it is; a model folder is converted to INT8 first with
    random calibration inputs (the arena depends on shapes and operators, not on the values). None when the
    model fits already, is an ONNX file, or cannot be converted."""
    import tempfile

    from edgeslim.errors import EdgeslimError
    from edgeslim.litert import litert_available
    from edgeslim.litert.micro import tflm_arena

    model = Path(model)
    if fit.get("fits_ram") is not False or not litert_available("micro", "run"):
        return None
    runtime = int(fit["ram_bytes"]) - int(fit["arena_bytes"])
    try:
        if model.suffix == ".tflite":
            data, how = model.read_bytes(), "the rewritten file"
        elif model.is_dir() and litert_available("convert"):
            from edgeslim import models
            from edgeslim.litert.convert import to_tflite
            from edgeslim.litert.options import ExportOptions

            net, spec = models.load_model(model)
            shape = tuple(spec.get("input_shape") or ())
            if not shape:
                return None
            calib = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
            with tempfile.TemporaryDirectory() as tmp:
                to_tflite(net, shape, Path(tmp) / "m.tflite", ExportOptions(int8=True), calib=calib)
                data = (Path(tmp) / "m.tflite").read_bytes()
            how = "an INT8 conversion of the model (random calibration: same shapes and operators)"
        else:
            return None
        new, rep = minimise(data, max_recompute)
        plain, small = tflm_arena(data), tflm_arena(new)
    except EdgeslimError:
        return None
    ram = small.total_bytes + runtime
    return {"arena_bytes_plain": plain.total_bytes, "arena_bytes": small.total_bytes, "ram_bytes": ram,
            "ram_bytes_plain": plain.total_bytes + runtime,
            "fits_ram_plain": plain.total_bytes + runtime <= int(fit["ram_available"]),
            "fits_ram": ram <= int(fit["ram_available"]), "saves_bytes": plain.total_bytes - small.total_bytes,
            "recompute_fraction": rep["recompute_fraction"], "patch_grid": rep["patch_grid"],
            "arena_source": f"recorded:tflite-micro on {how}",
            "command": f"edgeslim export {model} --format tflite --int8 --min-arena -o OUT.tflite"
            if model.is_dir() else None}
