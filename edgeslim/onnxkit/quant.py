"""ONNX Runtime's quantization tooling, wrapped once: static INT8 (QDQ or QOperator) in a named integer
format, dynamic INT8, FP16 conversion, block-wise INT4 weight-only (MatMulNBits), plus the graph
clean-ups around them and the one SQNR every quantization report uses.

Format names: `u8s8` = uint8 activations, int8 weights; `s8s8` = int8 both; `-rr` = reduce_range
(7-bit weights, avoids int16 overflow in the u8s8 AVX2 kernel on CPUs without VNNI); `-pc` =
per-channel weight scales (else per tensor).

Calibration data is always a sequence of feeds ({input name: array}); `array_feeds` cuts one input array
into such feeds (16 samples each, or exactly the model's fixed batch: `calibration_feeds`), so one reader serves the pipeline's passes and `edgeslim optimize`.
ORT's calibrators reduce the ranges feed by feed (strided calibration), so calibration memory is one
feed's activations, not all samples' (tests/test_calibration_memory.py).
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeslim.errors import EdgeslimError, choices
from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.graph import QDQ_OPS

Feed = dict[str, np.ndarray]
DYNAMIC_OPS = ["MatMul", "Gemm", "LSTM", "GRU", "Attention"]
QUANTIZED_OPS = QDQ_OPS | {"MatMulNBits", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                           "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                           "MatMulIntegerToFloat", "QGemm"}
SQNR_IDENTICAL_DB = 200.0  # SQNR reported when the outputs are identical (finite, so JSON can hold it)


@dataclass(frozen=True)
class IntFormat:
    activation: str  # "uint8" | "int8"
    reduce_range: bool
    per_channel: bool

    @property
    def name(self) -> str:
        a = "u8" if self.activation == "uint8" else "s8"
        return f"{a}s8" + ("-rr" if self.reduce_range else "") + ("-pc" if self.per_channel else "")


def parse_format(s: str, where: str = "candidates") -> IntFormat:
    parts = s.split("-")
    base, flags = parts[0], set(parts[1:])
    if base not in ("u8s8", "s8s8") or not flags <= {"rr", "pc"} or len(flags) != len(parts) - 1:
        raise EdgeslimError(
            f"{where}: unknown integer format '{s}'; valid: u8s8 or s8s8, optionally with -rr and/or -pc "
            "(e.g. u8s8-rr-pc)"
        )
    return IntFormat("uint8" if base == "u8s8" else "int8", "rr" in flags, "pc" in flags)


class FeedReader:
    """ONNX Runtime's CalibrationDataReader over a sequence of feeds, read one at a time (a lazy sequence,
    `onnxkit.lazy.LazyFeeds`, stays on disk). `set_range` and `__len__` let ORT's strided calibration
    (`CalibStridedMinMax`, used by `quantize_static`) reduce the ranges one feed at a time, so its
    calibrators never hold more than one feed's intermediate tensors."""

    def __init__(self, feeds: Sequence[Feed]):
        self.feeds, self.i, self.end = feeds, 0, len(feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def get_next(self) -> Feed | None:
        if self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.feeds))

    def rewind(self) -> None:
        self.i, self.end = 0, len(self.feeds)


def array_feeds(name: str, x: np.ndarray, batch: int = 16, fixed: bool = False) -> list[Feed]:
    """Calibration feeds for a single-input model: `x` (float32) in batches of `batch` samples. `fixed`: the
    model takes exactly `batch` samples per run, so a short last batch is filled with the first samples again
    (repeating a sample moves no min/max range)."""
    x = x.astype(np.float32)
    out = [{name: x[i : i + batch]} for i in range(0, len(x), batch)]
    if fixed and out and len(out[-1][name]) < batch:
        out[-1] = {name: np.resize(x, (batch, *x.shape[1:]))[:batch] if len(x) < batch
                   else np.concatenate([out[-1][name], x[: batch - len(out[-1][name])]])}
    return out


def input_batch(src: Path | onnx.ModelProto) -> int | None:
    """The fixed batch (leading dim, an int > 0) of the model's first input, or None when it is dynamic. A model
    whose batch is fixed (at 1: one sample at a time) must be fed exactly that many rows per run."""
    m = src if isinstance(src, onnx.ModelProto) else onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def calibration_feeds(src: Path, calib: np.ndarray, batch: int = 16) -> list[Feed]:
    """Calibration feeds of the single-input model at `src` (shape checked in one line,
    `check_calibration_input`): `batch` samples per feed, or exactly the model's fixed batch (`input_batch`)."""
    name = check_calibration_input(src, calib)
    fixed = input_batch(src)
    return array_feeds(name, calib, fixed or batch, fixed=fixed is not None)


@contextmanager
def quiet() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger on every call; keep the command's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def check_calibration_input(src: Path, calib: np.ndarray) -> str:
    """Raise a one-line EdgeslimError when the calibration samples do not fit the model's input.
    Returns the input's name."""
    inp = onnx.load(str(src), load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    got = tuple(calib.shape[1:])
    if len(dims) != len(got) or any(d and d != g for d, g in zip(dims, got)):
        want = tuple(d or "?" for d in dims)
        raise EdgeslimError(
            f"calibration data has sample shape {got} but {src.name} input '{inp.name}' expects {want}; "
            "calibrate with samples of the task the model was trained on"
        )
    return inp.name


def check_float(src: Path, where: str) -> None:
    """Quantizing an already quantized model is a recipe mistake: say so in one line."""
    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    done = ops & QUANTIZED_OPS
    if done:
        raise EdgeslimError(
            f"{where}: {src} is already quantized (has {', '.join(sorted(done))}); use one quantization pass "
            "per recipe (qat, quantize_int8, quantize_dynamic, quantize_fp16 or quantize_int4_weights)"
        )


def preprocess(src: Path, dst: Path) -> None:
    """ORT's pre-quantization step (shape inference and graph clean-up, e.g. Conv+BN fusion)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def qdq_ops(exclude_ops: set[str]) -> list[str]:
    """The op types ORT's QDQ quantizer handles, minus `exclude_ops`."""
    from onnxruntime.quantization.registry import QDQRegistry

    return sorted(set(QDQRegistry) - exclude_ops)


def _overrides(src: Path, act_overrides: dict[str, tuple[float, int]], fmt: IntFormat) -> dict[str, list[dict]]:
    """ORT TensorQuantOverrides from {tensor: (scale, uint8 zero point)} for tensors present in `src`."""
    g = onnx.load(str(src)).graph
    present = {t for n in g.node for t in n.input}
    out: dict[str, list[dict]] = {}
    for t, (scale, zp) in act_overrides.items():
        if t in present:  # uint8 zero point z is int8 z - 128 on the same grid
            z = np.uint8(zp) if fmt.activation == "uint8" else np.int8(zp - 128)
            out[t] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(z)}]
    return out


@dataclass(frozen=True)
class StaticQuant:
    """How `quantize_static` calibrates and what it quantizes (ONNX Runtime's keywords, grouped once).
    `method`: calibration (minmax, percentile, entropy). `qdq`: QDQ format, else QOperator (QLinearConv, ...).
    `op_types`: ops to quantize (default: every op ORT supports); `exclude_nodes` stay float. `act_overrides`
    fixes {tensor: (scale, uint8 zero point)} instead of calibrating it (e.g. QAT scales). `ranges` ({tensor:
    (min, max)}, float units) replaces calibration altogether (ranges chosen elsewhere, e.g. per tensor by
    `quant.calib_select`; tensors missing from it stay float). `keep_activations` keeps Relu/Clip nodes ORT
    would fold into the quantization range (ORT still fuses them when the session loads; `quant.qdq_float`
    needs them to put layers back in float). `extra`: more of ORT's extra_options (e.g. DefaultTensorType for
    graphs with contrib ops)."""

    method: str = "minmax"
    qdq: bool = True
    op_types: Sequence[str] | None = None
    exclude_nodes: Sequence[str] = ()
    act_overrides: dict[str, tuple[float, int]] | None = None
    ranges: dict[str, tuple[float, float]] | None = None
    keep_activations: bool = False
    extra: dict | None = None


def quantize_static(src: Path, dst: Path, feeds: Sequence[Feed], fmt: IntFormat, how: StaticQuant | None = None,
                    ) -> None:
    """Static INT8 of `src` (pre-processed) into `dst` in format `fmt`, calibrated on `feeds` as `how`
    (`StaticQuant`; default: minmax, QDQ, every supported op) says. Raises whatever the tooling raises."""
    h = how or StaticQuant()
    method, ranges = h.method, h.ranges
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    meth = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}
    if method not in meth:
        raise EdgeslimError(f"unknown calibration method '{method}'; valid: {choices(meth)}")
    with quiet(), tempfile.TemporaryDirectory() as td:
        cache = None
        if ranges is not None:
            from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

            cache = Path(td) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
                k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                for k, (lo, hi) in ranges.items()}), cache)
            method = "minmax"
        ort_quantize_static(
            str(src), str(dst), FeedReader(feeds),
            quant_format=QuantFormat.QDQ if h.qdq else QuantFormat.QOperator,
            op_types_to_quantize=list(h.op_types) if h.op_types is not None else None,
            per_channel=fmt.per_channel, reduce_range=fmt.reduce_range,
            activation_type=QuantType.QUInt8 if fmt.activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(h.exclude_nodes), calibrate_method=meth[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibMovingAverage": False,
                           "TensorQuantOverrides": _overrides(src, h.act_overrides or {}, fmt),
                           "QDQKeepRemovableActivations": h.keep_activations,
                           "CalibStridedMinMax": 1 if feeds else None,  # ranges reduced feed by feed
                           **(h.extra or {})},
            calibration_cache_path=cache,
        )


def quantize_static_model(model: onnx.ModelProto, feeds: Sequence[Feed], fmt: IntFormat,
                          how: StaticQuant | None = None) -> onnx.ModelProto:
    """`quantize_static` of an in-memory model (work files in a temporary folder)."""
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_static(src, dst, feeds, fmt, how)
        return onnx.load(str(dst))


def quantize_static_file(src: Path, dst: Path, calib: np.ndarray, fmt: IntFormat, method: str = "minmax") -> None:
    """Check, pre-process and statically quantize a single-input model calibrated on the samples `calib`."""
    pre = dst.with_suffix(".pre.onnx")
    preprocess(src, pre)
    quantize_static(pre, dst, calibration_feeds(src, calib), fmt, StaticQuant(method=method))
    pre.unlink(missing_ok=True)


def quantize_dynamic_file(
    src: Path, dst: Path, *, per_channel: bool = False, reduce_range: bool = True,
    op_types: Sequence[str] = tuple(DYNAMIC_OPS), exclude_nodes: Sequence[str] = (), extra: dict | None = None,
) -> None:
    """Dynamic INT8: weights stored int8, activations scaled at run time (MatMul/Gemm/RNN/Attention).
    `extra`: ORT extra_options (e.g. DefaultTensorType for graphs with contrib ops such as Attention)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with quiet():
        ort_quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(op_types), per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             nodes_to_exclude=sorted(exclude_nodes), extra_options=extra or {})


def convert_fp16(model: onnx.ModelProto, block_ops: set[str] | None = None) -> onnx.ModelProto:
    """FP16 weights and compute, float32 inputs/outputs (Cast at the edges). `block_ops` stay FP32 on top
    of the converter's default block list. Uses the converter bundled with ONNX Runtime: no extra package,
    and it converts graphs with If bodies that onnxconverter-common's copy leaves with type errors."""
    from onnxruntime.transformers import float16

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | (block_ops or set()))
    with warnings.catch_warnings():  # one warning per clipped tiny weight; fidelity checks judge them
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)


def quantize_int4_file(src: Path, dst: Path, block_size: int, symmetric: bool) -> int:
    """Block-wise INT4 weight-only quantization of MatMul weights (ORT's MatMulNBits). Returns the
    number of MatMulNBits nodes written."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block_size, is_symmetric=symmetric)
    q.process()
    m = q.model.model
    write_bytes(dst, m.SerializeToString())
    return sum(n.op_type == "MatMulNBits" for n in m.graph.node)


def gemm_to_matmul(src: Path, dst: Path) -> int:
    """Rewrite Gemm(A, B const, C) with alpha=beta=1 as MatMul + Add, so MatMul-only tools (dynamic
    INT8, MatMulNBits INT4) reach Linear layers. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    out, n_done = [], 0
    for n in g.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0
                or a.get("beta", 1.0) != 1.0):
            out.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if a.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        wname = n.input[1] + "_kn"
        g.initializer.append(numpy_helper.from_array(w, wname))
        mm_out = n.output[0] + ("_mm" if len(n.input) > 2 else "")
        out.append(helper.make_node("MatMul", [n.input[0], wname], [mm_out], name=(n.name or "gemm") + "_matmul"))
        if len(n.input) > 2 and n.input[2]:
            out.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=(n.name or "gemm") + "_add"))
        n_done += 1
    del g.node[:]
    g.node.extend(out)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    write_bytes(dst, m.SerializeToString())
    return n_done


def compact_onnx(src: Path, dst: Path) -> int:
    """Rewrite with short tensor names, no node names/doc strings and no value_info (ONNX Runtime
    re-infers shapes) except the shapes `dim_names` writes for equal-shaped elementwise inputs. A QDQ graph has ~3 names per layer, and on small models the names are a
    sizeable share of the file. Graph inputs/outputs keep their names. Returns the new size in bytes.

    One renaming for the main graph and every `If`/`Loop`/`Scan` body below it (their inputs, outputs,
    initializers and nodes): a body reading a main-graph tensor by name reads it under its new name
    (renaming the main graph alone left PP-OCRv4 rec's `If` bodies reading names nothing produced; issue 23)."""
    from edgeslim.onnxkit.graph import graphs

    m = onnx.load(str(src))
    g = m.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    ren: dict[str, str] = {}

    def r(n: str) -> str:
        if not n or n in keep:
            return n
        return ren.setdefault(n, format(len(ren), "x"))

    for sg in graphs(g):
        del sg.value_info[:]
        for t in sg.initializer:
            t.name = r(t.name)
        for n in sg.node:
            n.name, n.doc_string = "", ""
            n.input[:] = [r(x) for x in n.input]
            n.output[:] = [r(x) for x in n.output]
        if sg is not g:
            for v in [*sg.input, *sg.output]:
                v.name = r(v.name)
    from edgeslim.onnxkit.dim_names import name_dims

    name_dims(m)  # the value_info dropped above, written again where ONNX Runtime needs it (`dim_names`)
    data = m.SerializeToString()
    write_bytes(dst, data)
    return len(data)


def sqnr_from_sums(signal: float, noise: float) -> float:
    """SQNR in dB from the summed squares of the reference (`signal`) and of the error (`noise`);
    SQNR_IDENTICAL_DB when there is no error at all."""
    return SQNR_IDENTICAL_DB if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum(ref^2) / sum((ref - got)^2)), computed in
    float64; SQNR_IDENTICAL_DB (200) when `got` equals `ref`."""
    ref64 = np.asarray(ref, np.float64)
    noise = float(((ref64 - np.asarray(got, np.float64)) ** 2).sum())
    return sqnr_from_sums(float((ref64 * ref64).sum()), noise)
