"""How the weights of layers kept float FOR FIDELITY are stored on disk: int8 codes or fp16.

The INT8 plan keeps some layers in float because INT8 activations there break the outputs; those layers
run with their original weights. Their compute stays FP32 either way; only the file changes:
- ``"fp16"``: the original weight in fp16 + ``Cast`` (half the FP32 bytes);
- ``"int8"``: the original weight rounded to int8, symmetric, one scale per output channel (Conv axis 0,
  ConvTranspose axis 1, MatMul's last axis, Gemm by ``transB``: ``onnxkit.weight_only.WEIGHT_AXES``), decoded by
  ``Cast -> Mul`` (a quarter of the FP32 bytes). This is the storage layers kept float for SPEED already
  get. The decode chain is constant, and ONNX Runtime folds it into an FP32 initializer when the session
  loads, so the kernels are the FP32 ones; a ``DequantizeLinear`` on the weight would be cheaper to write
  but ORT does not fold a constant DequantizeLinear (it keeps it to fuse QDQ groups; checked on ORT 1.32:
  the optimised graph of ``DequantizeLinear -> Conv`` keeps both nodes and loses the NCHWc conv, whereas
  ``Cast -> Mul -> Conv`` becomes one NCHWc Conv), so it would run on every call.

Weight rounding alone is usually harmless (the activations stay float), but not always: `choose_storage`
measures the finished plan both ways on the plan's fidelity feeds and keeps int8 only when the plan's
worst-output cosine stays at or above its target, or drops by at most `STORAGE_TOL`; otherwise fp16. The
choice and both cosines go in the plan's notes and steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.qdq_shrink import shrink

STORAGES = ("int8", "fp16")
STORAGE_TOL = 1e-4  # worst-output cosine int8 storage may cost when it does not keep the target


@dataclass
class StorageChoice:
    storage: str                  # "int8" or "fp16": how fidelity-float weights are stored in `model`
    model: onnx.ModelProto
    cosine: float                 # the plan's worst-output cosine with that storage
    cosines: dict[str, float]     # storage -> cosine (both when both were measured)
    sizes: dict[str, int]         # storage -> serialized bytes
    why: str


def choose_storage(build: Callable[[str], onnx.ModelProto], evaluate: Callable[[onnx.ModelProto], float],
                   target: float, tol: float = STORAGE_TOL, worst: dict | None = None) -> StorageChoice:
    """Build the plan with fp16- and int8-stored fidelity floats (`build(storage)`), measure both with
    `evaluate` (worst-output cosine), keep int8 when it is smaller and its cosine is >= `target` or within
    `tol` of fp16's. `worst` (the evaluator's last-call record, if any) is left describing the chosen model."""
    m16 = build("fp16")
    c16 = evaluate(m16)
    w16 = dict(worst or {})
    m8 = build("int8")
    sizes = {"fp16": m16.ByteSize(), "int8": m8.ByteSize()}
    if sizes["int8"] >= sizes["fp16"]:
        return StorageChoice("fp16", m16, c16, {"fp16": c16}, sizes,
                             "fp16: int8 storage saves nothing here (no large Conv/MatMul/Gemm weight kept float "
                             "for fidelity)")
    c8 = evaluate(m8)
    cos = {"fp16": c16, "int8": c8}
    size = f"{sizes['fp16']:,} -> {sizes['int8']:,} B"
    if c8 >= target or c16 - c8 <= tol:
        why = (f"int8 (per output channel, Cast->Mul folded at load): cosine {c16:.5f} -> {c8:.5f} "
               + (f">= target {target:g}" if c8 >= target else f"(drop <= {tol:g})") + f", {size}")
        return StorageChoice("int8", m8, c8, cos, sizes, why)
    if worst is not None:
        worst.clear()
        worst.update(w16)
    why = (f"fp16: int8 storage would drop cosine {c16:.5f} -> {c8:.5f} (below target {target:g} and by more "
           f"than {tol:g}), {size} forgone")
    return StorageChoice("fp16", m16, c16, cos, sizes, why)


def plan_storage(qdq: onnx.ModelProto, float_model: onnx.ModelProto, float_nodes: set[str], exact_nodes: set[str],
                 final: onnx.ModelProto, evaluate: Callable[[onnx.ModelProto], float], target: float,
                 int8_min_elements: int, worst: dict | None = None) -> StorageChoice:
    """`choose_storage` for the INT8 plan: `final` is the finished plan (shrunk) with fp16 storage, built from the
    fully quantized `qdq` with `float_nodes` float, of which `exact_nodes` take `float_model`'s weights."""
    def build(storage: str) -> onnx.ModelProto:
        if storage == "fp16":
            return final
        return shrink(keep_float(qdq, float_nodes, exact=exact_nodes, float_model=float_model,
                                 int8_min_elements=int8_min_elements, exact_storage=storage))[0]
    return choose_storage(build, evaluate, target, worst=worst)
