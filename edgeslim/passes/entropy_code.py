"""`entropy_code`: store the model as codebooks + Huffman-coded cluster indices and sparse positions (the
`.eshare` file of `edgeslim.formats.eshare`); that file's bytes are the stage's size."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.formats.eshare import ESHARE_FILE, load_shared, save_shared
from edgeslim.passes.base import ZOO_ONLY, PassConfig, PassResult, RunContext, register
from edgeslim.quant.sharing import shared_layers


class EntropyCode(PassConfig):
    gap_bits: int = Field(5, ge=1, le=16, description="zero runs up to 2^gap_bits - 2 per symbol; longer ones add a filler")
    huffman: bool = Field(True, description="Huffman-code indices and runs (false: fixed-width codes)")
    max_codebook: int = Field(256, ge=1, le=65536, description="refuse layers with more distinct weights")


@register("entropy_code", EntropyCode, kinds=ZOO_ONLY)
def entropy_code(model: nn.Module | None, task: Task, cfg: EntropyCode, ctx: RunContext) -> PassResult:
    """Store the model as codebooks + Huffman-coded indices and sparse positions (the stage's size)."""
    assert model is not None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    shared = [f"{n}.weight" if n else "weight" for n, _ in shared_layers(model)]
    path = ctx.stage_dir / ESHARE_FILE
    spec = {k: v for k, v in ctx.spec.items() if k != "extra"}  # architecture only, not training notes
    acct = save_shared(path, state, spec, shared, cfg.gap_bits, cfg.huffman, cfg.max_codebook)
    back = load_shared(path)
    exact = all(torch.equal(back[k], state[k]) for k in state)
    if not exact:
        raise AssertionError("entropy_code: the decoded file differs from the model")
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((state[n] != 0).sum()) for n in shared)
    dense = 4 * params
    notes = {
        **acct, "dense_fp32_bytes": dense, "compression": round(dense / acct["file_bytes"], 2),
        "bits_per_nonzero_weight": round(8 * (acct["index_bytes"] + acct["position_bytes"]) / max(1, nonzero), 3),
        "roundtrip_exact": exact,
    }
    return PassResult(model, artifact=path, notes=notes)
