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

Weight rounding alone is usually harmless (the activations stay float), but not always: on PP-OCRv4 det int8
storage of all 17 fidelity floats took the plan's cosine from 0.9954 to 0.9623 (target 0.99): those are the
layers most sensitive to quantization. So `plan_storage` measures:
1. every fidelity float int8-stored: kept when the plan's worst-output cosine drops by at most `STORAGE_TOL`
   from the fp16 plan, or, staying >= its target, by at most `STORAGE_SHARE` of the fp16 plan's error
   (1 - cosine) or by at most `STORAGE_HEADROOM` of its headroom over the target (cosine - target). Not "down
   to the target": the plan is picked on its own feeds and checked again on validation samples; a first version
   that spent the headroom down to the target (PP-OCRv4 det: 0.9954 -> 0.9923 on the plan's feeds, target 0.99)
   fell to 0.9894 on validation and the stage fell back to FP32 speed (`w16`); half the headroom rejects that
   case (0.0031 > 0.0027). The headroom clause came with GPTQ codes: on PP-OCRv4 rec (fp16 plan 0.9980 top-1
   agreement, target 0.99) GPTQ took the bisection's 16 int8-stored layers from 0.9791 to 0.9942 (each run's
   own ranking) and all 32 from 0.9740 to 0.9834, but the error share (0.0002, two flipped positions in 10,240) admitted 3 of 33 (2.16x smaller);
2. else each layer alone int8-stored, ranked by the cosine it costs (on `SENS_FEEDS` feeds) per byte it saves,
   then a bisection on how many of the first layers are int8-stored that keeps the same rule on all feeds; the
   others stay fp16 (none: the whole model stays fp16).
The choice, the cosines and the sizes go in the plan's notes and steps. Feeds: the plan's own (those its
fidelity fallback is judged on).

The int8 codes are GPTQ's (`quant.gptq`: rounding that minimises each layer's output error on the plan's
calibration feeds, same format and decode) where the caller passes them (`float_model` as a pair), else
round-to-nearest. On PP-OCRv4 rec (33 fidelity floats) round-to-nearest int8 storage of all of them took the
plan's top-1 agreement per position from 0.9976 to 0.9740 and only 1 of 33 got int8 storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from edgeslim.quant.gptq import Rounded, with_grid
from edgeslim.quant.layer_select import WEIGHT_CODES_MIN
from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.qdq_shrink import shrink
from edgeslim.quant.stream_eval import Evaluate

STORAGE_TOL = 1e-4    # worst-output cosine int8 storage may always cost
STORAGE_SHARE = 0.1   # or this share of the fp16 plan's own error (1 - cosine), when the target still holds
STORAGE_HEADROOM = 0.5  # or this share of the fp16 plan's headroom over its target, when the target holds
SENS_FEEDS = 16       # feeds for the per-layer ranking (4 probe feeds ranked PP-OCRv4 det's layers poorly)


@dataclass
class StorageChoice:
    int8_units: list[str]         # fidelity-float units whose weights are int8 codes in `model` (others fp16)
    of: int                       # fidelity-float units
    model: onnx.ModelProto
    cosine: float                 # the plan's worst-output cosine with that storage, all feeds
    cosines: dict[str, float]     # "fp16", "int8" (all int8-stored), "chosen": cosine on all feeds
    sizes: dict[str, int]         # same keys: serialized bytes
    why: str
    trail: list[tuple[int, float]] = field(default_factory=list)  # (units int8-stored, cosine) of the bisection

    @property
    def storage(self) -> str:
        """"int8", "fp16" or "mixed"."""
        return "fp16" if not self.int8_units else "int8" if len(self.int8_units) == self.of else "mixed"

    def record(self) -> dict:
        """JSON-able summary for the plan's steps."""
        return {"chosen": self.storage, "int8_layers": len(self.int8_units), "of": self.of, "cosine": self.cosines,
                "bytes": self.sizes, "bisection": self.trail}


def plan_storage(qdq: onnx.ModelProto, float_model: onnx.ModelProto | tuple[onnx.ModelProto, dict[str, Rounded]],
                 float_nodes: set[str],
                 exact: dict[str, set[str]], final: onnx.ModelProto, evaluate: Evaluate, target: float,
                 full_feeds: int, probe_feeds: int = 4, worst: dict | None = None) -> StorageChoice:
    """Storage of the fidelity floats' weights for the INT8 plan (module docstring). `final`: the finished plan
    (shrunk) with fp16 storage, built from the fully quantized `qdq` with `float_nodes` float, of which the
    nodes of the `exact` units ({unit: nodes}) take `float_model`'s weights; `float_model` = (float model,
    {node: GPTQ-rounded weight}) gives the int8-stored nodes those codes (`quant.gptq.grid_weights`). `worst`
    (the evaluator's last-call record, if any) is left describing the chosen model."""
    every = set().union(*exact.values()) if exact else set()
    fm, rounded = float_model if isinstance(float_model, tuple) else (float_model, {})

    def build(units: list[str], small: bool = True) -> onnx.ModelProto:
        if not units and small:
            return final
        int8 = set().union(*(exact[u] for u in units))
        m = keep_float(qdq, float_nodes, exact=every, float_model=with_grid(fm, rounded, int8),
                       int8_min_elements=WEIGHT_CODES_MIN, exact_int8=int8)
        return shrink(m)[0] if small else m

    def ok(c: float) -> bool:  # a tiny loss, or a small share of the plan's error or headroom that keeps its target
        return c16 - c <= STORAGE_TOL or (c >= target and c16 - c <= allowed)

    names = sorted(exact)
    c16 = evaluate(final, full_feeds)
    allowed = max(STORAGE_SHARE * (1.0 - c16), STORAGE_HEADROOM * (c16 - target))
    snap = dict(worst or {})
    m8 = build(names)
    sizes = {"fp16": final.ByteSize(), "int8": m8.ByteSize()}
    if sizes["int8"] >= sizes["fp16"]:
        return StorageChoice([], len(names), final, c16, {"fp16": c16}, sizes,
                             "fp16 (int8 storage saves nothing: no large Conv/MatMul/Gemm weight among them)")
    c8 = evaluate(m8, full_feeds)
    cos = {"fp16": c16, "int8": c8}
    size = f"{sizes['fp16']:,} -> {sizes['int8']:,} B"
    rule = (f"cosine within {STORAGE_TOL:g} of fp16's, or >= target {target:g} and within the larger of {STORAGE_SHARE:g} "
            f"of fp16's error and {STORAGE_HEADROOM:g} of its headroom over the target = {allowed:.5f}")
    if ok(c8):
        return StorageChoice(names, len(names), m8, c8, {**cos, "chosen": c8}, {**sizes, "chosen": sizes["int8"]},
                             f"all int8 per output channel (Cast->Mul, folded at load): cosine {c16:.5f} -> {c8:.5f}, "
                             f"{size} ({rule})")
    probe = min(full_feeds, max(probe_feeds, SENS_FEEDS))
    p16, b16 = evaluate(final, probe), build([], small=False).ByteSize() if names else 0
    sens, saved = {}, {}
    for u in names:  # each layer alone int8-stored: cosine lost (probe feeds) per byte saved
        m = build([u], small=False)
        sens[u], saved[u] = p16 - evaluate(m, probe), b16 - m.ByteSize()
    order = sorted((u for u in names if saved[u] > 0), key=lambda u: (sens[u] / saved[u], u))
    lo, hi, best, c_best = 0, len(order), final, c16  # invariant: lo meets the rule, hi does not
    trail = [(0, c16), (len(order), c8)]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = build(order[:mid])
        c = evaluate(m, full_feeds)
        trail.append((mid, c))
        if ok(c):
            lo, best, c_best, snap = mid, m, c, dict(worst or {})
        else:
            hi = mid
    if worst is not None:
        worst.clear()
        worst.update(snap)
    sizes["chosen"] = best.ByteSize()
    cos["chosen"] = c_best
    tried = ", ".join(f"{k} int8 -> {c:.5f}" for k, c in trail)
    if not lo:
        return StorageChoice([], len(names), final, c16, cos, sizes, f"fp16: int8 storage of any of them breaks "
                             f"the rule ({rule}; {tried}); {size} forgone", trail)
    return StorageChoice(order[:lo], len(names), best, c_best, cos, sizes,
                         f"{lo}/{len(names)} int8 per output channel (least cosine lost per byte saved), the "
                         f"others fp16: cosine {c16:.5f} -> {c_best:.5f}, {sizes['fp16']:,} -> {sizes['chosen']:,} B "
                         f"({rule}; all int8 {c8:.5f}, {sizes['int8']:,} B; {tried})", trail)
