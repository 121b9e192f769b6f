"""Per-operator counts of a `.tflite` file, read from its own flatbuffer: what `measure.energy`'s analytic model
needs (MACs, other ops, bytes, precision per operator) for a file that has no ONNX model beside it.

MACs at batch 1 (the file's tensor shapes): CONV_2D = output elements x kernel h x w x input channels;
DEPTHWISE_CONV_2D = output elements x kernel h x w; FULLY_CONNECTED = output elements x input features;
other operators (pooling, add, activations, softmax, ...) = one op per output element, and shape-only
operators (RESHAPE, SQUEEZE, ...) nothing. Precision per operator: int8 when its first input is an 8-bit
integer tensor, fp16 for a float16 one, fp32 otherwise. Weight bytes: the stored buffers of its constant
inputs. Activation bytes: its non-constant inputs and outputs at their stored type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.measure.onnx_counts import GraphCount, LayerCount

MAC_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}
FREE_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE", "SHAPE"}
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8}  # TensorType -> bytes (float32, ...)
_INT8 = {3, 9}  # uint8, int8


def count_tflite(path: str | Path) -> GraphCount:
    """Per-operator counts of subgraph 0 of the `.tflite` at `path` (module docstring)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    data = Path(path).read_bytes()
    try:
        model = fb.Model.GetRootAsModel(data, 0)
        names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            codes.append(oc.CustomCode().decode() if oc.CustomCode() else names.get(code, f"BUILTIN_{code}"))
        sg = model.Subgraphs(0)
        layers = []
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            layers.append(_layer(model, sg, op, codes[op.OpcodeIndex()], j))
    except EdgeslimError:
        raise
    except Exception as e:  # a truncated or foreign file fails deep in flatbuffers
        raise EdgeslimError(f"{path}: not a valid .tflite flatbuffer ({type(e).__name__}: {e})") from None
    return GraphCount(layers)


def _layer(model, sg, op, name: str, j: int) -> LayerCount:
    def tensor(i: int):
        return sg.Tensors(i)

    def shape(i: int) -> list[int]:
        return [int(d) for d in tensor(i).ShapeAsNumpy()] if tensor(i).ShapeLength() else []

    def nbytes(i: int) -> int:
        return int(np.prod(shape(i) or [1])) * _ITEMSIZE.get(tensor(i).Type(), 4)

    def const(i: int) -> bool:
        b = tensor(i).Buffer()
        return b > 0 and model.Buffers(b).DataLength() > 0

    ins = [i for i in (op.InputsAsNumpy() if op.InputsLength() else []) if i >= 0]
    outs = [i for i in (op.OutputsAsNumpy() if op.OutputsLength() else []) if i >= 0]
    out_elems = sum(int(np.prod(shape(i) or [1])) for i in outs)
    macs = ops = 0
    if name in ("CONV_2D", "TRANSPOSE_CONV") and len(ins) >= 2:
        w = shape(ins[1])  # [cout, kh, kw, cin]
        macs = out_elems * int(np.prod(w[1:])) if len(w) == 4 else 0
    elif name == "DEPTHWISE_CONV_2D" and len(ins) >= 2:
        w = shape(ins[1])  # [1, kh, kw, cout]
        macs = out_elems * w[1] * w[2] if len(w) == 4 else 0
    elif name in ("FULLY_CONNECTED", "BATCH_MATMUL") and len(ins) >= 2:
        w = shape(ins[1])
        macs = out_elems * (w[-1] if w else 1)
    elif name not in FREE_OPS:
        ops = out_elems
    first = tensor(ins[0]).Type() if ins else 0
    prec = "int8" if first in _INT8 else ("fp16" if first == 1 else "fp32")
    return LayerCount(
        name=f"{name.lower()}_{j}", op=name, precision=prec, macs=int(macs), ops=int(ops),
        weight_bytes=sum(nbytes(i) for i in ins if const(i)),
        act_in_bytes=sum(nbytes(i) for i in ins if not const(i)), act_out_bytes=sum(nbytes(i) for i in outs))


__all__ = ["count_tflite"]
