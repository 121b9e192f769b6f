"""What the text-encoder passes (`edgeslim/passes/encoder_*.py`) share: the distillation settings of the
structural passes (a pydantic mixin of their configs; the passes register with `kinds=TEXT_ONLY`), the check that a pass got a text encoder, and the
recovery by distillation. Light on purpose (pydantic only at import): pass configs load without the `nlp`
extra; the work is imported when a pass runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeslim.errors import EdgeslimError


class DistillSettings(BaseModel):
    """Embedding distillation from the original encoder after a structural change (0 epochs: none).
    Pass configs inherit it beside `PassConfig` (same model_config: unknown keys are errors, frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distill_epochs: int = Field(0, ge=0, description="epochs of embedding distillation from the original")
    distill_lr: float = Field(1e-4, gt=0)
    distill_batch_size: int = Field(32, ge=1)
    loss: Literal["cosine", "mse"] = "cosine"
    token_weight: float = Field(1.0, ge=0, description="weight of the per-layer hidden-state term (0: off)")
    transfer: int = Field(1000, ge=0, description="extra sentences recombined from the calibration split")
    extra_text: str | None = Field(None, description="a .txt/.jsonl of unlabelled sentences to distil on too")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="training matmuls; auto: bf16 where the CPU has native bf16 (AMX / AVX-512 BF16)")


def check_text(name: str, model: Any, task: Any) -> None:
    from edgeslim.nlp.encoder import SentenceEncoder
    from edgeslim.nlp.text import TextTask

    if not isinstance(model, SentenceEncoder) or not isinstance(task, TextTask):
        raise EdgeslimError(f"{name}: works on text encoders (a Hugging Face folder given to --model); "
                            "this model is not one")


def recover(model: Any, task: Any, cfg: DistillSettings, ctx: Any, desc: str) -> dict:
    """Distil `model` in place from the run's original encoder on the calibration sentences plus
    `cfg.transfer` recombined ones and `cfg.extra_text`; `ctx` is the pass's RunContext (teacher, seed,
    quiet). Returns the notes ({} without epochs)."""
    if cfg.distill_epochs == 0:
        return {}
    from edgeslim.nlp.distill import distill_encoder
    from edgeslim.nlp.text import read_sentences, transfer_sentences

    texts = list(task.train) + transfer_sentences(task.train, cfg.transfer, ctx.seed)
    if cfg.extra_text:
        texts += read_sentences(Path(cfg.extra_text))[0]
    teacher: Any = ctx.teacher()
    hist = distill_encoder(model, teacher, texts, cfg, seed=ctx.seed, quiet=ctx.quiet, desc=desc)
    return {"distill": hist}
