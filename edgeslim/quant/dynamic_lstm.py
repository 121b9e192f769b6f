"""LSTM layers computed in int8 by ONNX Runtime's `DynamicQuantizeLSTM` (issue 23).

ONNX Runtime has no static-QDQ kernel for recurrent layers, so the INT8 plan stores their weights int8 and
computes them in FP32 (`quant.recurrent.weight_only_recurrent`). For an LSTM it does have a contrib kernel that
takes int8 W and R and quantizes each step's inputs on the fly (`onnxruntime.quantization.quantize_dynamic` writes
it). At batch 1 every step is a matrix-vector product that reads all of R, so int8 weights (a quarter of the bytes)
are what the step waits on: on ddddocr common's bidirectional 512-unit LSTM the FP32 stage went 14.5 -> 12.0 ms
(held-out outputs: worst cosine 0.9992, 99.8% top-1 agreement; timed interleaved, ORT 1.32, one thread).
Whether that holds is the INT8 pick's business: `passes.quantize_int8.per_layer_int8` times and judges the
candidates written with it beside those without, and keeps one by the same rule (on this host's timer only: a
device's cost model does not count the contrib op).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeslim.onnxkit.quant import quiet


def dynamic_lstm(src: Path, dst: Path) -> int:
    """Write `src` to `dst` with every LSTM whose W and R are float initializers as `DynamicQuantizeLSTM` (int8
    weights, per tensor); returns how many were rewritten (0: none, or ONNX Runtime's quantizer refused the
    graph; `dst` is then not written)."""
    m = onnx.load(str(src))
    inits = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names = [n.name for n in m.graph.node if n.op_type == "LSTM" and n.name and len(n.input) > 2
             and n.input[1] in inits and n.input[2] in inits]
    if not names:
        return 0
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet():  # the quantizer's advice to pre-process, printed once per call
            quantize_dynamic(src, dst, op_types_to_quantize=["LSTM"], nodes_to_quantize=names,
                             weight_type=QuantType.QInt8)
    except Exception:  # noqa: BLE001 -- a graph ORT's quantizer cannot take keeps its FP32 LSTM
        dst.unlink(missing_ok=True)
        return 0
    done = sum(n.op_type == "DynamicQuantizeLSTM" for n in onnx.load(str(dst)).graph.node)
    if not done:
        dst.unlink(missing_ok=True)
    return done
