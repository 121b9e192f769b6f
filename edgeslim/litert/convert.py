"""PyTorch -> `.tflite` with litert-torch: FP32, or full-integer INT8 through its PT2E quantizer.

INT8: the model is exported (`torch.export`), observers are inserted by litert-torch's `PT2EQuantizer`
(symmetric int8 weights, per channel by default; int8 activations), calibrated on a representative set
of the task's training inputs, and converted. The result has int8 inputs and outputs; their scale and
zero point are recorded in the file and in the returned summary.

Parity: the FP32 file must reproduce PyTorch's outputs within tolerance in the LiteRT interpreter; the
INT8 file must agree with the fake-quant PyTorch model (the same quantization simulated in float) to
within a few output quantization steps and on the predicted class.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.litert import captured_fds, require_litert
from edgeslim.litert.options import ExportOptions

# INT8 parity is judged on what a user cares about: the same top-1 class as the fake-quant PyTorch model on the
# check samples, and (with labels: the task's test split) no more than INT8_MAX_ACC_DROP points of accuracy
# lost against it. The largest output difference in quantization steps is reported, not judged: a few samples
# near a rounding boundary move one logit by several steps without changing any answer.
INT8_MIN_AGREEMENT = 0.95  # fraction of samples with the same top-1 class
INT8_MAX_ACC_DROP = 1.0  # points of accuracy the .tflite may lose against the fake-quant model


def _convert(module: nn.Module, example: torch.Tensor, quant_config=None) -> bytes:
    _quiet_imports()
    import litert_torch

    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), captured_fds():
            warnings.simplefilter("ignore")
            em = litert_torch.convert(module, (example,), quant_config=quant_config)
            path = Path(tmp) / "m.tflite"
            em.export(str(path))
            return path.read_bytes()
    except Exception as e:  # the converter raises many types (torch.export, MLIR lowering)
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise EdgeslimError(f"litert-torch could not convert the model: {type(e).__name__}: {msg}") from None


def _quiet_imports() -> None:
    """Import the converter stack with its import-time C++/absl chatter kept off the console."""
    with captured_fds(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import litert_torch  # noqa: F401
        import torchao.quantization.pt2e  # noqa: F401


def fake_quant_int8(model: nn.Module, input_shape: tuple[int, ...], calib: np.ndarray,
                    per_channel: bool = True, batch: int = 64):
    """PT2E-prepare and calibrate `model` on `calib`. Returns (fake-quant module, quantizer).

    The model is exported with a dynamic batch so calibration runs in batches (the histogram observers
    are slow one sample at a time); a model that cannot be exported that way is calibrated per sample.
    """
    _quiet_imports()
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(model.eval(), (torch.zeros(2, *input_shape),),
                                           dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        except Exception:  # noqa: BLE001 - fall back to a static batch-1 graph
            exported, batch = torch.export.export(model.eval(), (torch.zeros(1, *input_shape),)).module(), 1
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
        )
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        x = torch.from_numpy(np.asarray(calib, np.float32))
        for i in range(0, len(x), batch):
            prepared(x[i : i + batch])
        fq = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    fq.edgeslim_batch = batch  # type: ignore[assignment]
    return fq, quantizer


def _torch_outputs(module, x: np.ndarray) -> np.ndarray:
    batch = getattr(module, "edgeslim_batch", 64)
    xs = torch.from_numpy(np.asarray(x, np.float32))
    with torch.no_grad():
        return np.concatenate([module(xs[i : i + batch]).detach().numpy() for i in range(0, len(xs), batch)])


def strip_strings(data: bytes) -> bytes:
    """Drop tensor names, subgraph names and signature defs (what TFLite's strip_strings removes for MCUs)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(data))
    fu.strip_strings(m)
    return bytes(fu.convert_object_to_bytearray(m))


def to_tflite(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, options: ExportOptions | None = None, *,
    calib: np.ndarray | None = None, check: np.ndarray | None = None, labels: np.ndarray | None = None,
    atol: float = 1e-3, strip: bool = True,
) -> dict:
    """Convert `model` (batch-1 input of `input_shape`) to a `.tflite` at `path`; `options` (`ExportOptions`):
    its `int8`, `per_channel` and `force` apply here.

    `calib` (INT8 only, required): representative inputs. `check`: inputs for the parity check (PyTorch
    vs LiteRT for FP32; fake-quant PyTorch vs LiteRT for INT8). `strip` drops tensor names and
    signature defs as firmware builds do (the interpreter addresses tensors by index). Returns a summary: format, size, input
    and output tensors (dtype, shape, scale, zero point), operators and parity figures. `labels` (of `check`):
    INT8 parity also compares accuracy. A file that misses the parity check is not written (one-line error
    naming the figure and its limit) unless `force`: then it is, and the summary's `parity_failed` says why.
    """
    require_litert("convert", "run")
    _quiet_imports()
    from edgeslim.litert.interpreter import LiteRTModel

    o = options or ExportOptions()
    int8, per_channel, force = o.int8, o.per_channel, o.force
    model = model.eval()
    input_shape = tuple(int(s) for s in input_shape)
    if int8:
        if calib is None or len(calib) == 0:
            raise EdgeslimError("INT8 conversion needs a representative dataset (calibration inputs from the task)")
        if tuple(calib.shape[1:]) != input_shape:
            raise EdgeslimError(f"calibration data has sample shape {tuple(calib.shape[1:])}, model expects "
                                f"{input_shape}")
        from litert_torch.quantize import quant_config

        reference, quantizer = fake_quant_int8(model, input_shape, calib, per_channel)
        data = _convert(reference, torch.zeros(1, *input_shape), quant_config.QuantConfig(pt2e_quantizer=quantizer))
    else:
        reference = model
        data = _convert(model, torch.zeros(1, *input_shape))
    if strip:
        data = strip_strings(data)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.check.tmp")  # checked before it takes the real name
    write_bytes(tmp, data)
    try:
        lm = LiteRTModel(tmp)
        summary = {
            "format": "tflite", "precision": "int8" if int8 else "fp32", "path": str(path), "size_bytes": len(data),
            "input": lm.input.as_dict(), "output": lm.output.as_dict(), "ops": lm.ops(),
        }
        if int8 and not (lm.input.quantized and lm.output.quantized):
            raise EdgeslimError(f"{path}: INT8 conversion left float inputs/outputs ({lm.input.dtype}/{lm.output.dtype})")
        if check is not None and len(check):
            summary["parity"] = p = litert_parity(lm, reference, check, int8=int8, atol=atol, labels=labels)
            if p.get("parity_failed"):
                if not force:
                    raise EdgeslimError(f"{path}: {p['parity_failed']}; nothing written (--force writes it anyway, "
                                        "labelled as failing the check)")
                summary["parity_failed"] = p["parity_failed"]
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def litert_parity(lm, reference, x: np.ndarray, *, int8: bool, atol: float = 1e-3, labels: np.ndarray | None = None
           ) -> dict:
    """Compare the LiteRT model `lm` with the PyTorch `reference` on inputs `x` (module constants). The result's
    `parity_failed` (absent when it passes) names each failing figure with its limit, in one line."""
    ref = _torch_outputs(reference, x)
    got = lm.predict(x)
    diff = float(np.abs(ref - got).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    name = "INT8 .tflite" if int8 else ".tflite"
    out: dict = {"parity_reference": "fake-quant PyTorch" if int8 else "PyTorch", "parity_max_abs_diff": diff,
                 "parity_top1_agreement": agree, "parity_samples": len(x)}
    failed = []
    if not np.isfinite(got).all():
        failed.append(f"{name} outputs are not finite")
    if int8:
        out["parity_max_diff_lsb"] = round(diff / lm.output.scale, 3)
        if agree < INT8_MIN_AGREEMENT:
            failed.append(f"top-1 agreement with the fake-quant PyTorch model {100 * agree:.1f}% on {len(x)} samples "
                          f"(limit: at least {100 * INT8_MIN_AGREEMENT:g}%)")
        if labels is not None:
            y = np.asarray(labels)
            a_ref, a_got = float((ref.argmax(1) == y).mean()), float((got.argmax(1) == y).mean())
            out.update(parity_reference_accuracy=round(a_ref, 6), parity_accuracy=round(a_got, 6))
            drop = 100 * (a_ref - a_got)
            if drop > INT8_MAX_ACC_DROP + 1e-9:
                failed.append(f"accuracy {100 * a_got:.2f}% vs {100 * a_ref:.2f}% for the fake-quant PyTorch model "
                              f"on {len(y)} test samples, {drop:.2f} points lower (limit: at most "
                              f"{INT8_MAX_ACC_DROP:g} point lower)")
    else:
        scale = float(np.abs(ref).max()) or 1.0
        if np.isfinite(diff) and diff > atol * max(1.0, scale):
            failed.append(f"output differs from PyTorch by {diff:.3g} (limit: {atol:g} x {scale:.3g})")
    if failed:
        out["parity_failed"] = f"{name} misses the parity check: " + "; ".join(failed)
    return out


__all__ = ["to_tflite", "fake_quant_int8", "litert_parity"]
