"""`posterior_code`: bits per layer from the posterior, weight sharing and entropy coding, then the model
the stored file decodes to. The last step of Bayesian Compression (Louizos, Ullrich & Welling 2017):

1. each layer's index bits come from the run's carry (`posterior_bits`, left by `variational_prune`:
   log2 of the surviving weights' range over their mean posterior std), plus `bit_offset`; without that
   carry, `bits`;
2. its surviving weights are clustered into 2^bits shared values (k-means, `quant.sharing`), centroids
   fine-tuned with the zeros kept, then every float rounded to float16 (`fp16`);
3. the model is written as a `.eshare` file (`formats.eshare`: float16 codebooks, Huffman-coded indices,
   Huffman-coded zero runs with a per-layer symbol width) and decoded again: the stage's model IS the
   decoded one, so the run measures accuracy from the unpacked file, as `edgeslim unpack` rebuilds it.

Notes: the file's bytes, `compression` (dense float32 weights, 4 bytes per parameter, over the file) and
`compression_vs_fp32_file` (the float32 safetensors weights file, header included, over the file), and per
layer: bits, kept weights, and the stored bits per weight (index + position streams over the layer's weights).
"""

from __future__ import annotations

import torch
from pydantic import Field
from safetensors.torch import save as st_save
from torch import nn

from edgeslim.data import Task
from edgeslim.formats.eshare import ESHARE_FILE, load_shared_model, save_shared
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant.sharing import cluster_layer, shared_layers, unshare
from edgeslim.train import TrainConfig, evaluate


class PosteriorCode(PassConfig):
    bits: int = Field(5, ge=1, le=8, description="index bits of a layer without posterior bits in the carry")
    bit_offset: int = Field(0, ge=-7, le=7, description="added to each layer's posterior bits (clipped to 1-8)")
    iters: int = Field(30, ge=1, description="k-means iterations")
    fp16: bool = Field(True, description="round every float (centroids, biases, norms) to float16 after fine-tuning; "
                       "the file then stores them in 2 bytes, losslessly")
    gap_bits: int | None = Field(None, ge=1, le=12, description="zero-run symbol bits; default: per layer, the "
                                 "width that stores it smallest")
    finetune: TrainConfig | None = None  # centroid fine-tuning (default: the recipe's finetune block)


@torch.no_grad()
def _round_fp16(model: nn.Module) -> None:
    """Every float32 parameter and buffer (BatchNorm running statistics too) rounded to a float16 value; a
    tensor with a value beyond float16's range (65,504) stays float32 (and is stored so)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype == torch.float32 and bool(torch.isfinite(t.half()).all()):
            t.copy_(t.half().float())


@register("posterior_code", PosteriorCode)
def posterior_code(model: nn.Module | None, task: Task, cfg: PosteriorCode, ctx: RunContext) -> PassResult:
    """Bits per layer from the posterior, k-means weight sharing, entropy coding; the stage is the unpacked file."""
    assert model is not None
    carried = ctx.carry.get("posterior_bits") or {}
    layers = shared_layers(model)
    bits = {n: max(1, min(8, int(carried[n]) + cfg.bit_offset)) if n in carried else cfg.bits for n, _ in layers}
    fp32 = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous()
            for k, v in model.state_dict().items()}
    fp32_file = len(st_save(fp32))  # the float32 weights file (safetensors, header included)
    dense = 4 * sum(p.numel() for p in model.parameters())
    stats = {n: cluster_layer(m, bits[n], "linear", cfg.iters) for n, m in layers}
    acc_clustered = evaluate(model, task.x_val, task.y_val)
    try:
        hist = ctx.finetune_model(model, task, cfg.finetune, desc="posterior_code")
    finally:
        unshare(model)
    if cfg.fp16:
        _round_fp16(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = [f"{n}.weight" if n else "weight" for n, _ in layers]
    path = ctx.stage_dir / ESHARE_FILE
    spec = {k: v for k, v in ctx.spec.items() if k != "extra"}
    per: dict[str, dict] = {}
    acct = save_shared(path, state, spec, names, cfg.gap_bits or "auto", True, 256, half_codebooks=True,
                       per_tensor=per)
    unpacked, _ = load_shared_model(path)  # what `edgeslim unpack` rebuilds
    back = unpacked.state_dict()
    if not all(torch.equal(back[k], state[k]) for k in state):
        raise AssertionError("posterior_code: the decoded file differs from the model")
    acc = evaluate(unpacked, task.x_val, task.y_val)
    per_layer = {}
    for (n, _), t in zip(layers, names, strict=True):
        p = per[t]
        per_layer[n] = {"bits": bits[n], "clusters": p["k"], "kept": p["nonzero"], "weights": p["size"],
                        "sparsity": round(1 - p["nonzero"] / p["size"], 4), "gap_bits": p["gap_bits"],
                        "bits_per_weight": round(8 * (p["index_bytes"] + p["position_bytes"]) / p["size"], 4),
                        "bits_per_kept_weight": round(8 * (p["index_bytes"] + p["position_bytes"])
                                                      / max(1, p["nonzero"]), 3),
                        "bytes": sum(p[k] for k in ("codebook_bytes", "table_bytes", "index_bytes", "position_bytes"))}
    notes = {**acct, "dense_fp32_bytes": dense, "fp32_file_bytes": fp32_file,
             "compression": round(dense / acct["file_bytes"], 2),
             "compression_vs_fp32_file": round(fp32_file / acct["file_bytes"], 2),
             "bits_per_weight": {n: v["bits_per_weight"] for n, v in per_layer.items()},
             "bits_source": "posterior" if carried else "config", "layers": per_layer,
             "val_accuracy_clustered": acc_clustered, "val_accuracy_finetuned": hist["val_accuracy"],
             "val_accuracy": acc, "accuracy_from": "unpacked .eshare file", "roundtrip_exact": True,
             "clusters": {n: s.get("clusters", 0) for n, s in stats.items()}}
    if not ctx.quiet:
        for n, v in per_layer.items():
            print(f"[posterior_code] {n}: {v['bits']} bits ({v['clusters']} shared values), kept "
                  f"{v['kept']:,}/{v['weights']:,}, {v['bits_per_weight']:.4f} bits/weight stored", flush=True)
        print(f"[posterior_code] {path.name}: {acct['file_bytes']:,} B = {notes['compression']}x smaller than "
              f"float32 weights ({dense:,} B), {notes['compression_vs_fp32_file']}x the float32 safetensors "
              f"file ({fp32_file:,} B); val accuracy from the unpacked file {100 * acc:.2f}%", flush=True)
    return PassResult(unpacked, artifact=path, notes=notes, carry={"keep_sparsity": True})
