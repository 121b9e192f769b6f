"""The search space: a list of recipe *generators* (knobs), each owning one technique.

A knob samples its settings from an Optuna trial, contributes recipe steps, and says how those
settings change the model's footprint so infeasible candidates are rejected before any training.
Knobs for passes that are not registered (another technique not installed yet) are skipped, so new
passes plug in by adding one `Knob` to `KNOBS`.

Footprint predictions (`Footprint`) are *estimates* from the baseline's per-layer table: a structured
ratio r keeps (1 - r) of each hidden layer's output channels, so a layer's weights scale by the kept
fraction of its inputs times that of its outputs; bit widths scale stored bytes; unstructured zeros
change neither the dense file nor the dense MACs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from edgeslim.passes import PASSES

# Step order inside a recipe: structure changes first, then weight edits, quantization last.
ORDER = {"distill": 0, "structured": 10, "lowrank": 20, "unstructured": 30, "quantize": 90}


@dataclass(frozen=True)
class BaselineLayer:
    """One Conv/Linear layer of the baseline (counts for one sample)."""

    name: str
    params: int  # weights + bias
    macs: int
    out_elems: int  # output activation elements
    in_elems: int  # input activation elements
    last: bool = False  # the classifier: its outputs are never pruned


@dataclass(frozen=True)
class Baseline:
    """What the search knows about the baseline model without training anything."""

    layers: tuple[BaselineLayer, ...]
    params: int
    macs: int
    onnx_bytes: int  # measured size of the exported FP32 ONNX file
    arena_bytes: int  # FP32 activation arena (planned or estimated, see `arena_method`)
    arena_method: str
    other_params: int = 0  # parameters outside Conv/Linear (norms): kept at FP32

    @property
    def overhead_bytes(self) -> int:
        """ONNX bytes that are not parameters (graph, names): kept in every prediction."""
        return max(0, self.onnx_bytes - 4 * self.params)


@dataclass
class Footprint:
    """A candidate's predicted footprint. Bytes; MACs per inference."""

    params: float
    macs: float
    flash_bytes: float
    arena_bytes: float
    weight_bits: float = 32.0
    act_bits: float = 32.0


@dataclass
class Contribution:
    steps: list[tuple[int, str, dict]] = field(default_factory=list)  # (order, pass name, config)
    keep_out: dict[str, float] = field(default_factory=dict)  # layer -> kept fraction of outputs
    lowrank_keep: float = 1.0  # fraction of Linear/Conv weights kept by factorisation
    weight_bits: float | None = None
    act_bits: float | None = None
    finetune_epochs: int | None = None


@dataclass(frozen=True)
class Knob:
    """A recipe generator. `sample(trial, base)` suggests parameters and returns the recipe contribution;
    `extreme(base)` is its most compressive setting (used to say what the space can reach at best)."""

    name: str
    needs: tuple[str, ...]  # registered passes it uses; the knob is skipped when one is missing
    sample: Callable[[optuna.trial.BaseTrial, Baseline], Contribution]
    extreme: Callable[[Baseline], list[dict[str, Any]]]  # most compressive settings (one per trade-off)

    def available(self) -> bool:
        return all(p in PASSES for p in self.needs)


def _fields(pass_name: str) -> set[str]:
    return set(PASSES[pass_name].config.model_fields) if pass_name in PASSES else set()


EPOCHS = "@epochs"  # replaced by the stage's fine-tuning epochs (proxy or full) when the YAML is written
MAX_RATIO = 0.8  # fraction of a layer's channels structured pruning may remove


def ratio_param(layer: str) -> str:
    return f"ratio:{layer}"


def prunable_layers(base: Baseline) -> list[str]:
    return [layer.name for layer in base.layers if not layer.last]


def _structured(trial: optuna.trial.BaseTrial, base: Baseline) -> Contribution:
    """Per-layer channel ratios (structured pruning physically removes channels: smaller and faster)."""
    ratios = {n: trial.suggest_float(ratio_param(n), 0.0, MAX_RATIO, step=0.05) for n in prunable_layers(base)}
    ratios = {n: round(r, 2) for n, r in ratios.items() if r > 0}
    if not ratios:
        return Contribution()
    cfg: dict[str, Any] = {"ratio": max(ratios.values()), "importance": "l2"}
    if "layer_ratios" in _fields("structured_prune"):
        # unlisted layers get `ratio`: keep it below one channel in any layer of these models
        cfg.update(ratio=0.001, layer_ratios=ratios)
        keep = {n: 1 - r for n, r in ratios.items()}
    else:  # no per-layer support: one global ratio
        keep = {n: 1 - cfg["ratio"] for n in prunable_layers(base)}
    return Contribution(steps=[(ORDER["structured"], "structured_prune", cfg)], keep_out=keep)


def _unstructured(trial: optuna.trial.BaseTrial, base: Baseline) -> Contribution:
    """Global magnitude sparsity: zeros the dense file and dense kernels still store and multiply."""
    s = trial.suggest_float("sparsity", 0.0, 0.9, step=0.1)
    if s <= 0:
        return Contribution()
    return Contribution(steps=[(ORDER["unstructured"], "magnitude_prune", {"sparsity": round(s, 2)})])


def _lowrank(trial: optuna.trial.BaseTrial, base: Baseline) -> Contribution:
    keep = trial.suggest_float("lowrank_keep", 0.3, 1.0, step=0.1)
    f = _fields("lowrank")
    key = next((k for k in ("target_compression", "compression") if k in f), None)
    if keep >= 1.0 or key is None:
        return Contribution()
    return Contribution(steps=[(ORDER["lowrank"], "lowrank", {key: round(1 / keep, 3)})], lowrank_keep=keep)


def _distill(trial: optuna.trial.BaseTrial, base: Baseline) -> Contribution:
    """Knowledge distillation from the baseline during every later fine-tuning (architecture kept)."""
    on = trial.suggest_categorical("distill", [False, True])
    f = _fields("distill")
    if not on or "init" not in f:
        return Contribution()
    cfg: dict[str, Any] = {"init": "current"}
    if "train" in f:
        cfg["train"] = {"epochs": EPOCHS}
    return Contribution(steps=[(ORDER["distill"], "distill", cfg)])


def _quantize(trial: optuna.trial.BaseTrial, base: Baseline) -> Contribution:
    """FP32, INT8 (ONNX QDQ, runs in ONNX Runtime) or per-layer mixed 2/4/8-bit weights under a size
    fraction (the quantization area's sensitivity allocation; simulated: packed file, FP32 ONNX)."""
    options = ["fp32", "int8"] + (["mixed"] if "mixed_precision" in PASSES else [])
    kind = trial.suggest_categorical("weights", options)
    if kind == "fp32":
        return Contribution(weight_bits=32, act_bits=32)
    if kind == "int8":
        return Contribution(steps=[(ORDER["quantize"], "quantize_int8", {})], weight_bits=8, act_bits=8)
    frac = round(trial.suggest_float("mixed_fraction", 0.07, 0.25, step=0.02), 2)
    cfg = {"budget_fraction": frac, "bit_choices": [2, 4, 8], "finetune": {"epochs": EPOCHS}}
    return Contribution(steps=[(ORDER["quantize"] - 1, "mixed_precision", cfg)], weight_bits=32 * frac, act_bits=32)


def _finetune(trial: optuna.trial.BaseTrial, base: Baseline) -> Contribution:
    return Contribution(finetune_epochs=trial.suggest_int("finetune_epochs", 2, 12, step=2))


KNOBS: list[Knob] = [
    Knob("distill", ("distill",), _distill, lambda b: [{"distill": False}]),
    Knob("structured", ("structured_prune",), _structured,
         lambda b: [{ratio_param(n): MAX_RATIO for n in prunable_layers(b)}]),
    Knob("lowrank", ("lowrank",), _lowrank, lambda b: [{"lowrank_keep": 0.3}]),
    Knob("unstructured", ("magnitude_prune",), _unstructured, lambda b: [{"sparsity": 0.9}]),
    Knob("quantize", ("quantize_int8",), _quantize,
         lambda b: [{"weights": "int8"}] + ([{"weights": "mixed", "mixed_fraction": 0.07}]
                                            if "mixed_precision" in PASSES else [])),
    Knob("finetune", (), _finetune, lambda b: [{"finetune_epochs": 2}]),
]


def knob_names() -> list[str]:
    return [k.name for k in KNOBS]


def active_knobs(names: list[str] | None = None) -> list[Knob]:
    """Knobs whose passes are registered, optionally restricted to `names`."""
    return [k for k in KNOBS if k.available() and (names is None or k.name in names)]


@dataclass
class RecipeCandidate:
    steps: list[tuple[str, dict]]
    finetune_epochs: int
    footprint: Footprint
    keep_out: dict[str, float]


def sample_candidate(trial: optuna.trial.BaseTrial, knobs: list[Knob], base: Baseline) -> RecipeCandidate:
    parts = [k.sample(trial, base) for k in knobs]
    steps = sorted((s for p in parts for s in p.steps), key=lambda s: s[0])
    keep: dict[str, float] = {}
    for p in parts:
        keep.update(p.keep_out)
    lr_keep = min((p.lowrank_keep for p in parts), default=1.0)
    wbits = next((p.weight_bits for p in parts if p.weight_bits is not None), 32.0)
    abits = next((p.act_bits for p in parts if p.act_bits is not None), 32.0)
    epochs = next((p.finetune_epochs for p in parts if p.finetune_epochs is not None), 4)
    fp = predict_footprint(base, keep, lr_keep, wbits, abits)
    return RecipeCandidate([(n, c) for _, n, c in steps], epochs, fp, keep)


def predict_footprint(base: Baseline, keep_out: dict[str, float], lowrank_keep: float, wbits: float,
            abits: float) -> Footprint:
    """Predicted footprint from the baseline's layer table (estimates, see the module docstring)."""
    params = macs = peak = 0.0
    prev_keep = 1.0
    kept_total = 0.0
    for layer in base.layers:
        out_keep = 1.0 if layer.last else keep_out.get(layer.name, 1.0)
        scale = prev_keep * out_keep * lowrank_keep
        params += layer.params * scale
        macs += layer.macs * scale
        peak = max(peak, layer.in_elems * prev_keep + layer.out_elems * out_keep)
        kept_total += out_keep
        prev_keep = out_keep
    mean_keep = kept_total / max(1, len(base.layers))
    params += base.other_params * mean_keep
    flash = base.overhead_bytes + params * wbits / 8
    base_peak = max((layer.in_elems + layer.out_elems for layer in base.layers), default=1)
    arena = base.arena_bytes * (peak / base_peak) * abits / 32
    return Footprint(params, macs, flash, arena, wbits, abits)


def extreme_footprint(knobs: list[Knob], base: Baseline) -> Footprint:
    """The smallest footprint the space can reach: every knob at its most compressive setting(s), the
    minimum of each quantity over the combinations (e.g. mixed bits give the smallest file, INT8 the
    smallest arena)."""
    import itertools

    best: Footprint | None = None
    for combo in itertools.product(*[k.extreme(base) for k in knobs]):
        params: dict[str, Any] = {}
        for d in combo:
            params.update(d)
        fp = sample_candidate(optuna.trial.FixedTrial(params), knobs, base).footprint
        if best is None:
            best = fp
        else:
            best = Footprint(min(best.params, fp.params), min(best.macs, fp.macs),
                             min(best.flash_bytes, fp.flash_bytes), min(best.arena_bytes, fp.arena_bytes),
                             min(best.weight_bits, fp.weight_bits), min(best.act_bits, fp.act_bits))
    assert best is not None
    return best


def _fill(obj: Any, epochs: int) -> Any:
    if isinstance(obj, dict):
        return {k: _fill(v, epochs) for k, v in obj.items()}
    return epochs if obj == EPOCHS else obj


def recipe_yaml(steps: list[tuple[str, dict]], epochs: int, lr: float = 1e-3, description: str = "") -> str:
    """The YAML recipe text that `edgeslim run` reproduces. A candidate without steps (the baseline
    itself) becomes a plain fine-tuning pass-through: 1% magnitude sparsity, which keeps accuracy."""
    import yaml

    doc: dict[str, Any] = {"version": 1}
    if description:
        doc["description"] = description
    doc["finetune"] = {"epochs": int(epochs), "lr": lr}
    doc["passes"] = [{n: _fill(dict(c), epochs)} for n, c in steps] or [{"magnitude_prune": {"sparsity": 0.01}}]
    return yaml.safe_dump(doc, sort_keys=False)
