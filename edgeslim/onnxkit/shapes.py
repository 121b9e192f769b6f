"""Shape inference: as far as it goes (`infer_shapes`, for optimising), or with every input made static at
batch 1 (`infer_static`, for the arena planner and the operation counts, which need concrete sizes)."""

from __future__ import annotations

import onnx
from onnx import shape_inference

from edgeslim.errors import EdgeslimError


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """ONNX shape inference with data propagation; returns (model, ok). Unresolvable shapes are kept."""
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), True
    except Exception:
        return model, False


def infer_static(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A copy with every graph input made static (batch -> 1, `shapes` overrides) and shapes inferred."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if shapes and inp.name in shapes:
            new = list(shapes[inp.name])
        else:
            new = [d.dim_value if d.HasField("dim_value") else (1 if i == 0 else -1) for i, d in enumerate(dims)]
            if any(v < 1 for v in new):
                raise EdgeslimError(f"input '{inp.name}' has unknown dimensions {new}; pass shapes="
                                    f"{{'{inp.name}': [1, ...]}} (CLI: --shape {inp.name}=1,...)")
        del dims[:]
        for v in new:
            dims.add().dim_value = int(v)
    del m.graph.value_info[:]
    for out in m.graph.output:  # let inference fill them with concrete dims
        out.type.tensor_type.ClearField("shape")
    try:
        return shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # onnx raises InferenceError subclasses
        raise EdgeslimError(f"shape inference failed: {str(e).splitlines()[0]}") from None
