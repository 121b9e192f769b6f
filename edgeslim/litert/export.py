"""A PyTorch model to `.tflite` with its checks (`tflite_export`), a `.tflite` to a C array for firmware
(`tflite_to_c`), and the metrics a `.tflite` gives a pipeline stage (`tflite_fields`).

Every export is checked against the PyTorch model (INT8 `.tflite` against the fake-quant model). A
`.tflite` export also reports its accuracy in the LiteRT interpreter and its TFLite Micro arena, and
writes them beside the file as JSON (`model.tflite` -> `model.json`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.fsutil import write_json
from edgeslim.litert.options import ExportOptions

TFLITE_FILE = "model.tflite"  # the `tflite` stage's file; its summary is the same name with .json
MICRO_CHECK = 16  # samples also run through TFLite Micro


def tflite_export(net, shape, out: Path, options: ExportOptions | None = None, *, task=None, check=None,
                  calib: np.ndarray | None = None) -> dict:
    """Convert, check parity, measure accuracy in LiteRT (with a task) and the TFLite Micro arena, as `options`
    (`ExportOptions`) say. INT8 calibrates on `calib` (default: `calibration_samples` of the task's training
    inputs) and, with a task, its parity is judged on the task's whole test split (accuracy of both, top-1
    agreement). `force`: write a file that misses the parity check (its summary's `parity_failed` says why).
    `min_arena` (INT8): rewrite the file for a smaller TFLite Micro arena (`edgeslim.litert.min_arena`; the
    report is `min_arena`, the plain file stays beside it), proven on the task's test inputs (else `check`)."""
    from edgeslim.litert import litert_available
    from edgeslim.litert.convert import to_tflite
    from edgeslim.litert.interpreter import LiteRTModel

    o = options or ExportOptions()
    int8, min_arena = o.int8, o.min_arena

    if not int8:
        calib = None
    elif calib is None and task is not None:
        calib = task.calibration(o.calibration_samples, o.seed)
    if min_arena and not int8:
        from edgeslim.errors import EdgeslimError

        raise EdgeslimError("--min-arena rewrites full-integer INT8 files for TFLite Micro; add --int8")
    proof_x, proof_y = (task.x_test, task.y_test) if task is not None else (check, None)
    labels = None
    if int8 and task is not None:  # judged on the whole test split, with its labels
        check, labels = task.x_test, task.y_test
    summary = to_tflite(net, shape, out, o, calib=calib, check=check, labels=labels)
    if min_arena:
        from edgeslim.litert import require_litert
        from edgeslim.litert.min_arena import apply_to_file

        require_litert("micro")
        summary["min_arena"] = apply_to_file(out, x=proof_x, y=proof_y, max_recompute=o.max_recompute,
                                             device=o.device)
        summary["size_bytes"] = out.stat().st_size
    if task is not None:
        summary["accuracy"] = round(LiteRTModel(out).accuracy(task.x_test, task.y_test), 6)
        summary["task"] = task.name
    if o.micro and litert_available("micro"):
        from edgeslim.litert.micro import MicroModel

        mm = MicroModel(out)
        if check is not None and len(check):  # TFLite Micro (reference kernels) vs LiteRT (XNNPACK)
            lm = LiteRTModel(out)
            x = np.asarray(check[:MICRO_CHECK], np.float32)
            got = np.stack([lm.output.dequantize(mm.invoke_raw(lm.input.quantize(x[i : i + 1])))[0]
                            for i in range(len(x))])
            summary["tflm_top1_agreement"] = float((got.argmax(1) == lm.predict(x).argmax(1)).mean())
            summary["tflm_checked_samples"] = len(x)
        summary["tflm_arena"] = mm.arena().as_dict()
    write_json(out.with_suffix(".json"), summary)
    return summary


def tflite_fields(s: dict) -> dict:
    """The metrics a `.tflite` summary gives a pipeline stage: path, precision, size, LiteRT accuracy,
    input quantization, parity and the TFLite Micro arena (bytes)."""
    arena = s.get("tflm_arena") or {}
    out = {
        "tflite": s["path"], "tflite_precision": s["precision"], "tflite_size_bytes": s["size_bytes"],
        "tflite_accuracy": s.get("accuracy"),
        "tflite_input": {k: s["input"][k] for k in ("dtype", "scale", "zero_point")},
        "tflite_parity": s.get("parity"),
    }
    if s.get("parity_failed"):
        out["tflite_parity_failed"] = s["parity_failed"]
    if arena:
        out.update(tflm_arena_bytes=arena["total_bytes"], tflm_arena_head_bytes=arena["head_bytes"],
                   tflm_arena_tail_bytes=arena["tail_bytes"])
    if s.get("min_arena"):  # --min-arena: the plain file's recorded arena beside the minimised one's
        out["tflm_arena_plain_bytes"] = s["min_arena"]["tflm_arena_plain"]["total_bytes"]
    return out


def tflite_to_c(tflite: Path, out: Path, arena: dict | None = None) -> dict:
    """The `.c`/`.h` pair for a `.tflite`, with the TFLite Micro arena recorded for it (run here if needed)."""
    from edgeslim.litert import require_litert
    from edgeslim.litert.carray import write_c_array

    require_litert("micro")
    if arena is None:
        from edgeslim.litert.micro import tflm_arena

        arena = tflm_arena(tflite).as_dict()
    c, h = write_c_array(tflite, out, arena_bytes=arena["total_bytes"], arena_head_bytes=arena["head_bytes"])
    return {"format": "c", "tflite": str(tflite), "c": str(c), "h": str(h), "size_bytes": tflite.stat().st_size,
            "tflm_arena": arena}


__all__ = ["tflite_export", "tflite_to_c", "tflite_fields", "TFLITE_FILE"]
