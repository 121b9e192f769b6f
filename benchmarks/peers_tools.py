"""The tools a user would pick instead of edgeslim, each called as its documentation shows, with its defaults
(used by benchmarks/peers.py). Every function writes one ONNX file that ONNX Runtime runs, or raises: the
benchmark turns the exception into the row's reason. NNCF and torchao come from `pip install -e '.[peers]'`;
ONNX Runtime's quantizers, torch.nn.utils.prune and Torch-Pruning are edgeslim dependencies already.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

# NNCF's documented switch to its telemetry stub: a benchmark sends nothing anywhere (set before nncf is imported)
os.environ.setdefault("NNCF_CI", "1")

Feed = dict[str, np.ndarray]
PEER_PACKAGES = ("onnxruntime", "torch", "torch-pruning", "nncf", "torchao")


def versions() -> dict[str, str]:
    """Installed version of every peer package ('not installed' when missing)."""
    out = {}
    for p in PEER_PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    return out


def need(module: str) -> None:
    """Raise a one-line reason when an optional peer is missing (the row shows it)."""
    try:
        __import__(module)
    except ImportError:
        raise RuntimeError(f"{module} not installed: pip install -e '.[peers]'") from None


def save_single_file(model: onnx.ModelProto | str | Path, dst: Path) -> None:
    """Save as one self-contained .onnx (external data pulled in), so size on disk is the whole model."""
    m = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    onnx.save(m, str(dst), save_as_external_data=False)


# --- ONNX Runtime ----------------------------------------------------------------------------------


class _Reader:
    """The CalibrationDataReader a user writes: yields the calibration feeds once."""

    def __init__(self, feeds: Sequence[Feed]):
        self._it = iter(list(feeds))

    def get_next(self) -> Feed | None:
        return next(self._it, None)


def ort_static(src: Path, dst: Path, feeds: Sequence[Feed]) -> None:
    """`onnxruntime.quantization.quantize_static(src, dst, reader)`: QDQ, per-tensor, s8 activations and
    weights, MinMax calibration (ONNX Runtime's defaults)."""
    from onnxruntime.quantization import quantize_static

    quantize_static(str(src), str(dst), _Reader(feeds))


def ort_dynamic(src: Path, dst: Path) -> None:
    """`onnxruntime.quantization.quantize_dynamic(src, dst)`: int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst))


# --- NNCF --------------------------------------------------------------------------------------------


def nncf_onnx(src: Path, dst: Path, feeds: Sequence[Feed]) -> None:
    """`nncf.quantize(onnx_model, nncf.Dataset(feeds))`, NNCF's default post-training quantization (mixed
    preset, MinMax + fast bias correction) on its ONNX backend, the one NNCF documents for ONNX Runtime."""
    need("nncf")
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    q = nncf.quantize(onnx.load(str(src)), nncf.Dataset(list(feeds)))
    save_single_file(q, dst)


# --- torchao -------------------------------------------------------------------------------------------


def _quiet_torchao() -> None:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    need("torchao")


def torchao_pt2e(net: nn.Module, calib: np.ndarray, dst: Path) -> None:
    """torchao's PT2E static INT8 for CPU: `prepare_pt2e` with the X86InductorQuantizer's default config,
    calibrate, `convert_pt2e`, then `torch.onnx.export(..., dynamo=True)` (the exporter for exported
    programs). Exported at batch 1, the shape it was captured at."""
    _quiet_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    x = torch.from_numpy(calib[:1])
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    m = prepare_pt2e(torch.export.export(copy.deepcopy(net).eval(), (x,)).module(), q)
    for i in range(len(calib)):
        m(torch.from_numpy(calib[i : i + 1]))
    m = convert_pt2e(m)
    _export_dynamo(m, x, dst)


def torchao_quantize(net: nn.Module, config: str, sample: np.ndarray, dst: Path) -> None:
    """`torchao.quantization.quantize_(model, Config())` (CPU-capable configs), then ONNX export: the
    TorchScript exporter first, the dynamo one if that fails; raises the last error."""
    _quiet_torchao()
    import torchao.quantization as aoq

    m = copy.deepcopy(net).eval()
    aoq.quantize_(m, getattr(aoq, config)())
    x = torch.from_numpy(sample[:1])
    errors = []
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["input"])
        dst.write_bytes(buf.getvalue())
        return
    except Exception as e:  # noqa: BLE001 - the row reports what the exporter said
        errors.append(f"TorchScript exporter: {_first_line(e)}")
    try:
        _export_dynamo(m, x, dst)
    except Exception as e:  # noqa: BLE001
        errors.append(f"dynamo exporter: {_first_line(e)}")
        raise RuntimeError("; ".join(errors)) from None


def _export_dynamo(m: nn.Module, x: torch.Tensor, dst: Path) -> None:
    import contextlib

    tmp = dst.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(tmp), dynamo=True, input_names=["input"])
    save_single_file(tmp, dst)
    for p in (tmp, Path(str(tmp) + ".data")):
        p.unlink(missing_ok=True)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:90]


# --- PyTorch pruning -------------------------------------------------------------------------------------


def _weights(net: nn.Module, kinds: tuple[type, ...]) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in net.modules() if isinstance(m, kinds)]


def torch_global_l1(net: nn.Module, amount: float) -> nn.Module:
    """`torch.nn.utils.prune.global_unstructured(params, L1Unstructured, amount)` over every Linear/Conv
    weight; the masks stay applied (forward pre-hooks) while the caller fine-tunes."""
    import torch.nn.utils.prune as prune

    prune.global_unstructured(_weights(net, (nn.Linear, nn.Conv1d, nn.Conv2d)), pruning_method=prune.L1Unstructured,
                              amount=amount)
    return net


def torch_ln_structured(net: nn.Module, amount: float) -> nn.Module:
    """`torch.nn.utils.prune.ln_structured(conv, "weight", amount, n=2, dim=0)` on every convolution: zeroes
    half the filters (L2 norm); the tensors keep their shapes."""
    import torch.nn.utils.prune as prune

    for m, name in _weights(net, (nn.Conv1d, nn.Conv2d)):
        prune.ln_structured(m, name, amount=amount, n=2, dim=0)
    return net


def torch_prune_finalize(net: nn.Module) -> nn.Module:
    """`prune.remove` on every pruned tensor: the zeros become plain weights (what gets exported)."""
    import torch.nn.utils.prune as prune

    for m in net.modules():
        if hasattr(m, "weight_orig"):
            prune.remove(m, "weight")
    return net


def tp_magnitude(net: nn.Module, input_shape: tuple[int, ...], ratio: float) -> nn.Module:
    """Torch-Pruning's MagnitudePruner with its defaults (L2 magnitude importance, one shot, the same ratio
    for every layer), the classifier left whole as its examples do; channels are removed physically."""
    import torch_pruning as tp

    classifier = [m for m in net.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(net, torch.randn(1, *input_shape), importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=classifier)
    pruner.step()
    return net
