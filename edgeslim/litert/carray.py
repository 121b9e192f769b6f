"""A `.c`/`.h` pair for a firmware project: the model as an aligned byte array, the arena size TFLite
Micro recorded for it, and the operators to register with `tflite::MicroMutableOpResolver`.

Only the flatbuffer is read here (no interpreter): the operator list comes from the model's operator
codes, so this also works where the arena is given by the caller.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_text

ALIGN = 16  # TFLite Micro requires the model buffer 16-byte aligned

# MicroMutableOpResolver method names that do not follow the CamelCase of the builtin operator name.
_RESOLVER_NAMES = {
    "BATCH_MATMUL": "AddBatchMatMul", "L2_NORMALIZATION": "AddL2Normalization", "LOG_SOFTMAX": "AddLogSoftmax",
    "PRELU": "AddPrelu", "RELU_N1_TO_1": "AddReluN1To1", "RELU_0_TO_1": "AddRelu0To1",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "RESIZE_BILINEAR": "AddResizeBilinear",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "SVDF": "AddSvdf",
    "GATHER_ND": "AddGatherNd", "SCATTER_ND": "AddScatterNd",
}


def op_names(data: bytes) -> list[str]:
    """Builtin operator names used by the model, in first-use order (e.g. CONV_2D, FULLY_CONNECTED)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    try:
        model = fb.Model.GetRootAsModel(data, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            codes.append((max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), oc.CustomCode()))
        names_by_code = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        used: list[str] = []
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            for j in range(sg.OperatorsLength()):
                code, custom = codes[sg.Operators(j).OpcodeIndex()]
                name = custom.decode() if custom else names_by_code.get(code, f"BUILTIN_{code}")
                if name not in used:
                    used.append(name)
        return used
    except Exception as e:  # a truncated or foreign file fails deep in flatbuffers
        raise EdgeslimError(f"not a valid .tflite flatbuffer ({type(e).__name__}: {e})") from None


_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


def io_tensors(data: bytes) -> dict[str, dict]:
    """Input and output tensor of subgraph 0: dtype, shape, scale and zero point (0 for float)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    sg = fb.Model.GetRootAsModel(data, 0).Subgraphs(0)
    out = {}
    for kind, idx in (("input", sg.Inputs(0)), ("output", sg.Outputs(0))):
        t = sg.Tensors(idx)
        q = t.Quantization()
        scale = float(q.Scale(0)) if q is not None and q.ScaleLength() else 0.0
        zp = int(q.ZeroPoint(0)) if q is not None and q.ZeroPointLength() else 0
        out[kind] = {"dtype": _TYPES.get(t.Type(), str(t.Type())), "shape": [int(d) for d in t.ShapeAsNumpy()],
                     "scale": scale, "zero_point": zp}
    return out


def resolver_call(op: str) -> str:
    """`CONV_2D` -> `AddConv2D` (the MicroMutableOpResolver method that registers it)."""
    if op in _RESOLVER_NAMES:
        return _RESOLVER_NAMES[op]
    parts = [p.capitalize() if p.isalpha() else p.upper() for p in op.split("_")]
    return "Add" + "".join(parts)


def c_identifier(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else f"m_{s}"


def write_c_array(tflite: str | Path, out: str | Path, *, arena_bytes: int | None = None,
                  name: str | None = None, arena_head_bytes: int | None = None) -> tuple[Path, Path]:
    """Write `OUT.c` and `OUT.h` (OUT without suffix). Returns their paths."""
    src = Path(tflite)
    data = src.read_bytes()
    ops = op_names(data)
    base = Path(out)
    base = base.with_suffix("") if base.suffix in (".c", ".h", ".cc") else base
    ident = c_identifier(name or base.name)
    up = ident.upper()
    c_path, h_path = base.with_name(base.name + ".c"), base.with_name(base.name + ".h")
    arena_line = (f"#define {up}_ARENA_SIZE {arena_bytes}u  /* TFLite Micro recorded arena "
                  f"(head {arena_head_bytes} + tail {arena_bytes - arena_head_bytes}); CMSIS-NN kernels may need "
                  "a little more scratch */" if arena_bytes is not None and arena_head_bytes is not None else
                  f"#define {up}_ARENA_SIZE {arena_bytes}u" if arena_bytes is not None else
                  f"/* {up}_ARENA_SIZE unknown: run `edgeslim fit` on the .tflite */")
    resolver = "\n".join(f" *   resolver.{resolver_call(op)}();" for op in ops)
    io_lines = ""
    for kind, t in io_tensors(data).items():
        k = kind.upper()
        io_lines += f"/* {kind}: {t['dtype']} {t['shape']}" + (
            f", real = ({k.lower()}_q - zero_point) * scale */\n#define {up}_{k}_SCALE {t['scale']!r}f\n"
            f"#define {up}_{k}_ZERO_POINT {t['zero_point']}\n" if t["scale"] else " */\n")
    h = f"""/* Generated by edgeslim from {src.name}: {len(data)} bytes, {len(ops)} operator types. */
#ifndef {up}_H_
#define {up}_H_

#include <stddef.h>

#define {up}_LEN {len(data)}u
{arena_line}
#define {up}_NUM_OPS {len(ops)}
{io_lines}/* Operators: {", ".join(ops)}
 * Register them with:
 *   static tflite::MicroMutableOpResolver<{up}_NUM_OPS> resolver;
{resolver}
 */

#ifdef __cplusplus
extern "C" {{
#endif

extern const unsigned char {ident}[];
extern const size_t {ident}_len;

#ifdef __cplusplus
}}
#endif

#endif  /* {up}_H_ */
"""
    rows = []
    for i in range(0, len(data), 12):
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in data[i : i + 12]) + ",")
    c = f"""/* Generated by edgeslim from {src.name}. Do not edit: re-run `edgeslim export --format c`. */
#include "{h_path.name}"

#if defined(__GNUC__) || defined(__clang__)
#define {up}_ALIGN __attribute__((aligned({ALIGN})))
#elif defined(_MSC_VER)
#define {up}_ALIGN __declspec(align({ALIGN}))
#else
#define {up}_ALIGN
#endif

const unsigned char {ident}[] {up}_ALIGN = {{
{chr(10).join(rows)}
}};
const size_t {ident}_len = {len(data)}u;
"""
    write_text(h_path, h)
    write_text(c_path, c)
    return c_path, h_path


def read_c_array(c_path: str | Path) -> bytes:
    """The bytes of the array in a generated `.c` file (for checks)."""
    text = Path(c_path).read_text()
    body = text[text.index("= {") + 3 : text.index("};")]
    return bytes(int(t, 16) for t in re.findall(r"0x([0-9a-fA-F]{2})", body))


__all__ = ["write_c_array", "read_c_array", "op_names", "resolver_call", "io_tensors"]
