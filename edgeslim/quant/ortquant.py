"""ONNX Runtime quantization tooling, wrapped: static QDQ in a named integer format, dynamic INT8,
FP16 conversion, block-wise INT4 weight-only (MatMulNBits), and interleaved latency timing so the
format can be chosen by measuring it on this machine rather than by habit.

Format names: `u8s8` = uint8 activations, int8 weights; `s8s8` = int8 both; `-rr` = reduce_range
(7-bit weights, avoids int16 overflow in the u8s8 AVX2 kernel on CPUs without VNNI); `-pc` =
per-channel weight scales (else per tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError, choices
from edgeslim.fsutil import write_bytes


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


class _Reader:
    """ONNX Runtime CalibrationDataReader over a numpy array, one batch of 16 per call."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 16):
        self.name, self.x, self.batch, self.i = name, x, batch, 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.x):
            return None
        self.i += self.batch
        return {self.name: self.x[self.i - self.batch : self.i]}

    def rewind(self) -> None:
        self.i = 0


def check_calibration(src: Path, calib: np.ndarray) -> str:
    """Raise a one-line EdgeslimError when the calibration samples do not fit the model's input."""
    import onnx

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
    import onnx

    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    done = ops & {"QuantizeLinear", "DequantizeLinear", "MatMulNBits", "QLinearConv", "MatMulInteger",
                  "DynamicQuantizeLinear"}
    if done:
        raise EdgeslimError(
            f"{where}: {src} is already quantized (has {', '.join(sorted(done))}); use one quantization pass "
            "per recipe (qat, quantize_int8, quantize_dynamic, quantize_fp16 or quantize_int4_weights)"
        )


def preprocess(src: Path, dst: Path) -> None:
    """ORT's pre-quantization step (shape inference and graph clean-up, e.g. Conv+BN fusion)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def quantize_static_fmt(
    pre: Path, dst: Path, calib: np.ndarray, fmt: IntFormat, method: str,
    act_overrides: dict[str, tuple[float, int]] | None = None,
) -> None:
    """Static QDQ quantization of an already pre-processed model, calibrated on `calib`.
    `act_overrides` fixes {tensor: (scale, uint8 zero point)} instead of calibrating it (e.g. QAT scales)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    name = check_calibration(pre, calib)
    meth = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}
    if method not in meth:
        raise EdgeslimError(f"unknown calibration method '{method}'; valid: {choices(meth)}")
    overrides: dict[str, list[dict]] = {}
    if act_overrides:
        g = onnx.load(str(pre)).graph
        present = {t for n in g.node for t in n.input}
        for t, (scale, zp) in act_overrides.items():
            if t in present:  # uint8 zero point z is int8 z - 128 on the same grid
                z = np.uint8(zp) if fmt.activation == "uint8" else np.int8(zp - 128)
                overrides[t] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(z)}]
    quantize_static(
        str(pre), str(dst), _Reader(name, calib.astype(np.float32)),
        quant_format=QuantFormat.QDQ, per_channel=fmt.per_channel, reduce_range=fmt.reduce_range,
        activation_type=QuantType.QUInt8 if fmt.activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=meth[method],
        extra_options={"CalibMovingAverage": False, "TensorQuantOverrides": overrides},
    )


def gemm_to_matmul(src: Path, dst: Path) -> int:
    """Rewrite Gemm(A, B const, C) with alpha=beta=1 as MatMul + Add, so MatMul-only tools (dynamic
    INT8, MatMulNBits INT4) reach Linear layers. Returns how many were rewritten."""
    import onnx
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


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool, reduce_range: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "LSTM", "GRU",
                                                                        "Attention"])


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute, float32 inputs/outputs (Cast at the edges). Uses the converter bundled
    with ONNX Runtime (same code as onnxconverter-common), so no extra package is needed."""
    import onnx
    from onnxruntime.transformers import float16

    m = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    write_bytes(dst, m.SerializeToString())


def quantize_int4_weights(src: Path, dst: Path, block_size: int, symmetric: bool) -> int:
    """Block-wise INT4 weight-only quantization of MatMul weights (ORT's MatMulNBits). Returns the
    number of MatMulNBits nodes written."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block_size, is_symmetric=symmetric)
    q.process()
    m = q.model.model
    write_bytes(dst, m.SerializeToString())
    return sum(n.op_type == "MatMulNBits" for n in m.graph.node)


def compact_onnx(src: Path, dst: Path) -> int:
    """Rewrite with short tensor names, no node names/doc strings and no value_info (ONNX Runtime
    re-infers shapes). A QDQ graph has ~3 names per layer, and on small models the names are a
    sizeable share of the file. Graph inputs/outputs keep their names. Returns the new size in bytes."""
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    del g.value_info[:]
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    ren: dict[str, str] = {}

    def r(n: str) -> str:
        if not n or n in keep:
            return n
        return ren.setdefault(n, format(len(ren), "x"))

    for t in g.initializer:
        t.name = r(t.name)
    for n in g.node:
        n.name, n.doc_string = "", ""
        n.input[:] = [r(x) for x in n.input]
        n.output[:] = [r(x) for x in n.output]
    data = m.SerializeToString()
    write_bytes(dst, data)
    return len(data)
