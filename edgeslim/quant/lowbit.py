"""Low-bit weight quantization with straight-through fine-tuning, *simulated*: every Conv/Linear gets a
codec (`quant.codebook`), is fine-tuned through it, and keeps float weights that hold exactly the
quantized values; the storage cost is the packed weight file (`formats.packed`). Shared by the `lowbit`
and `mixed_precision` passes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgeslim.data import Task
from edgeslim.formats.packed import write_packed
from edgeslim.quant import fakequant as fq
from edgeslim.quant.codebook import WeightCodec, module_layer_sqnr
from edgeslim.train import evaluate


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, fq.QUANTIZABLE)]


def quantize_weights(
    model: nn.Module, task: Task, codec_for: Callable[[str, nn.Module], WeightCodec],
    finetune: Callable[[nn.Module], dict], path: Path,
) -> tuple[nn.Module, dict]:
    """Wrap every Conv/Linear with its codec, fine-tune with STE (`finetune(model)` returns the training
    history), bake the quantized values and write the packed weight file to `path`. Returns (baked model,
    notes: accuracies, average bits, packed bytes and the per-layer report)."""
    ref = copy.deepcopy(model).eval()
    codecs: dict[str, WeightCodec] = {}

    def wrap(name: str, layer: nn.Module) -> fq.QuantWrap:
        codecs[name] = codec_for(name, layer)
        return fq.QuantWrap(layer, codecs[name], None)

    fq.wrap_layers(model, wrap)
    before = evaluate(model, task.x_val, task.y_val)
    hist = finetune(model)
    baked = fq.unwrap(model)
    used = write_packed(path, baked.state_dict(), {f"{n}.weight": c for n, c in codecs.items()})
    sq = module_layer_sqnr(ref, baked, task.x_val[:128], list(codecs))
    mods = dict(baked.named_modules())
    layers = []
    for n in layer_names(ref):  # network order
        c = codecs[n]
        _, _, side = c.dequant(fq.weight_of(mods[n]))
        layers.append({"layer": n, "scheme": c.scheme, "bits": c.bits, "side_min": float(side.min()),
                       "side_max": float(side.max()), "weight_bytes": used[f"{n}.weight"],
                       "sqnr_db": sq.get(n)})
    n_w = sum(fq.weight_of(mods[n]).numel() for n in codecs)
    bits_avg = sum(c.bits * fq.weight_of(mods[n]).numel() for n, c in codecs.items()) / max(1, n_w)
    notes = {
        "simulated": True,
        "note": "simulated: no ONNX Runtime kernel for these bit widths; the ONNX holds float weights with the "
                "quantized values, size_bytes is the packed weight file",
        "val_accuracy_before_finetune": round(before, 6), "val_accuracy": round(hist["val_accuracy"], 6),
        "avg_weight_bits": round(bits_avg, 3), "packed_bytes": path.stat().st_size, "layers": layers,
    }
    return baked, notes
