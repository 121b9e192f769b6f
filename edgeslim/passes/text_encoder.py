"""Passes for text encoders (Hugging Face folders run with `edgeslim run ... --model FOLDER`).

Structured passes (`encoder_prune_heads`, `encoder_prune_ffn`, `encoder_drop_layers`) remove weights
physically and can recover by distilling the original encoder's embeddings (`distill_epochs`);
`encoder_distill` runs that distillation on its own. ONNX passes: `encoder_fuse` (ONNX Runtime's
transformer fusions), `encoder_int8_dynamic` and `encoder_int8_static` (sensitive layers kept float).
The work lives in `edgeslim.nlp` (imported lazily: these configs load without the `nlp` extra); the
text pipeline (`edgeslim.nlp.pipeline`) passes the current `SentenceEncoder` and a `TextTask`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgeslim.errors import EdgeslimError
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register

# Every pass a text-encoder recipe may hold; the text pipeline rejects the others in one line.
TEXT_PASSES: set[str] = set()


class _Distill(PassConfig):
    distill_epochs: int = Field(0, ge=0, description="epochs of embedding distillation from the original")
    distill_lr: float = Field(1e-4, gt=0)
    distill_batch_size: int = Field(32, ge=1)
    loss: Literal["cosine", "mse"] = "cosine"
    token_weight: float = Field(1.0, ge=0, description="weight of the last-hidden-state MSE term (0: off)")
    transfer: int = Field(2000, ge=0, description="extra sentences recombined from the calibration split")
    extra_text: str | None = Field(None, description="a .txt/.jsonl of unlabelled sentences to distil on too")


def _text(name: str, model: Any, task: Any) -> None:
    from edgeslim.nlp.encoder import SentenceEncoder
    from edgeslim.nlp.text import TextTask

    if not isinstance(model, SentenceEncoder) or not isinstance(task, TextTask):
        raise EdgeslimError(f"{name}: works on text encoders (a Hugging Face folder given to --model); "
                            "this model is not one")


def _recover(model: Any, task: Any, cfg: _Distill, ctx: RunContext, desc: str) -> dict:
    if cfg.distill_epochs == 0:
        return {}
    from edgeslim.nlp.distill import distill
    from edgeslim.nlp.text import read_sentences, transfer_sentences

    texts = list(task.train) + transfer_sentences(task.train, cfg.transfer, ctx.seed)
    if cfg.extra_text:
        texts += read_sentences(Path(cfg.extra_text))[0]
    teacher: Any = ctx.teacher()
    hist = distill(model, teacher, texts, epochs=cfg.distill_epochs, lr=cfg.distill_lr,
                   batch_size=cfg.distill_batch_size, loss=cfg.loss, token_weight=cfg.token_weight, seed=ctx.seed,
                   quiet=ctx.quiet, desc=desc)
    return {"distill": hist}


def _reg(name: str, cfg: type[PassConfig], kind: Literal["torch", "onnx"] = "torch") -> Any:
    TEXT_PASSES.add(name)
    return register(name, cfg, kind)


class EncoderPruneHeads(_Distill):
    ratio: float | None = Field(None, ge=0, lt=1, description="fraction of attention heads removed")
    target: int | None = Field(None, ge=1, description="attention heads kept in total (instead of ratio)")
    importance: Literal["gradient", "activation"] = "gradient"
    per_layer: bool = True  # the same share in every layer (ORT's fused Attention then fits every layer)


@_reg("encoder_prune_heads", EncoderPruneHeads)
def encoder_prune_heads(model: Any, task: Any, cfg: EncoderPruneHeads, ctx: RunContext) -> PassResult:
    """Structured attention-head pruning of a text encoder (Q/K/V and output rows/columns removed)."""
    _text("encoder_prune_heads", model, task)
    from edgeslim.nlp.prune import prune_attention_heads

    notes = prune_attention_heads(model, task.train, ratio=cfg.ratio, target=cfg.target, method=cfg.importance,
                                  per_layer=cfg.per_layer, seed=ctx.seed)
    notes.update(_recover(model, task, cfg, ctx, "heads"))
    return PassResult(model, notes=notes)


class EncoderPruneFFN(_Distill):
    ratio: float | None = Field(None, ge=0, lt=1, description="fraction of FFN neurons removed")
    target: int | None = Field(None, ge=1, description="FFN neurons kept in total (instead of ratio)")
    importance: Literal["gradient", "activation"] = "gradient"
    per_layer: bool = True
    multiple: int = Field(16, ge=1, description="kept neurons per layer rounded to this (aligned GEMM widths)")


@_reg("encoder_prune_ffn", EncoderPruneFFN)
def encoder_prune_ffn(model: Any, task: Any, cfg: EncoderPruneFFN, ctx: RunContext) -> PassResult:
    """Structured FFN-neuron pruning of a text encoder (intermediate rows / output columns removed)."""
    _text("encoder_prune_ffn", model, task)
    from edgeslim.nlp.prune import prune_ffn_neurons

    notes = prune_ffn_neurons(model, task.train, ratio=cfg.ratio, target=cfg.target, method=cfg.importance,
                              per_layer=cfg.per_layer, multiple=cfg.multiple, seed=ctx.seed)
    notes.update(_recover(model, task, cfg, ctx, "ffn"))
    return PassResult(model, notes=notes)


class EncoderDropLayers(_Distill):
    keep: int | None = Field(None, ge=1, description="encoder layers kept")
    drop: list[int] | None = Field(None, description="explicit layer indices to remove (instead of keep)")
    select: Literal["greedy", "alternate", "top"] = "greedy"
    distill_epochs: int = Field(4, ge=0)


@_reg("encoder_drop_layers", EncoderDropLayers)
def encoder_drop_layers(model: Any, task: Any, cfg: EncoderDropLayers, ctx: RunContext) -> PassResult:
    """Remove whole encoder layers, then distil the shallower student from the original's embeddings."""
    _text("encoder_drop_layers", model, task)
    from edgeslim.nlp.prune import drop_layers

    notes = drop_layers(model, task.train[:128], keep=cfg.keep, drop=cfg.drop, select=cfg.select)
    notes.update(_recover(model, task, cfg, ctx, "layers"))
    return PassResult(model, notes=notes)


class EncoderDistill(_Distill):
    distill_epochs: int = Field(4, ge=1)


@_reg("encoder_distill", EncoderDistill)
def encoder_distill(model: Any, task: Any, cfg: EncoderDistill, ctx: RunContext) -> PassResult:
    """Distil the current text encoder from the original's sentence embeddings (cosine/MSE)."""
    _text("encoder_distill", model, task)
    return PassResult(model, notes=_recover(model, task, cfg, ctx, "distill"))


class EncoderFuse(PassConfig):
    pass


@_reg("encoder_fuse", EncoderFuse, kind="onnx")
def encoder_fuse(model: Any, task: Any, cfg: EncoderFuse, ctx: RunContext) -> PassResult:
    """ONNX Runtime transformer fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm) of the ONNX."""
    _text("encoder_fuse", model, task)
    from edgeslim.nlp.passes import fuse

    return fuse(model, task, ctx)


class EncoderInt8Dynamic(PassConfig):
    per_channel: bool = True  # one weight scale per output channel: much closer embeddings, same kernels
    keep_float: int = Field(0, ge=0, description="most sensitive MatMul/Attention layers left float")
    keep_float_nodes: list[str] = Field(default_factory=list, description="ONNX node names left float too")
    embeddings: bool = True  # also store the embedding tables as int8 (the largest weights; Gather is exact)
    sensitivity_samples: int = Field(64, ge=1, description="calibration sentences for the sensitivity scores")


@_reg("encoder_int8_dynamic", EncoderInt8Dynamic, kind="onnx")
def encoder_int8_dynamic(model: Any, task: Any, cfg: EncoderInt8Dynamic, ctx: RunContext) -> PassResult:
    """Dynamic INT8 of a text encoder's MatMul/Attention layers (int8 weights), sensitive layers float."""
    _text("encoder_int8_dynamic", model, task)
    from edgeslim.nlp.passes import int8

    return int8(model, task, cfg, ctx, static=False)


class EncoderInt8Static(PassConfig):
    per_channel: bool = True
    keep_float: int = Field(2, ge=0, description="most sensitive MatMul layers left float")
    keep_float_nodes: list[str] = Field(default_factory=list)
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_samples: int = Field(128, ge=1, description="calibration sentences (one per batch)")
    sensitivity_samples: int = Field(64, ge=1)


@_reg("encoder_int8_static", EncoderInt8Static, kind="onnx")
def encoder_int8_static(model: Any, task: Any, cfg: EncoderInt8Static, ctx: RunContext) -> PassResult:
    """Static INT8 (QDQ, ranges calibrated on the calibration sentences) of a text encoder's MatMuls."""
    _text("encoder_int8_static", model, task)
    from edgeslim.nlp.passes import int8

    return int8(model, task, cfg, ctx, static=True)
