"""The pass registry, the context a pass runs in, and the record it returns.

A pass is `fn(model, task, cfg, ctx) -> PassResult`, registered by name with its pydantic config. A
recipe's keys are these names and the config's fields, so a typo fails validation with the valid list.

The registration also says what a pass consumes and produces: `torch` (an `nn.Module`) or `onnx` (the
previous stage's ONNX file, `ctx.prev_onnx`, in; a new ONNX file, `PassResult.onnx`, out). Once a pass
produced an ONNX-only model (e.g. quantized QDQ), only passes that consume ONNX may follow; nothing may
follow a pass registered `must_be_last`. The recipe parser checks both, naming the lines.

A pass changes nothing but its model and its stage folder: state for later passes goes out through
`PassResult.carry` (the pipeline merges it into `ctx.carry`; `finetune_hooks` turns it into hooks). A pass
times nothing: the pipeline measures every stage, and times all stages together at the end of the run; a
pass that needs a measurement to decide (the INT8 format picker) asks `ctx.measure`, the measurement core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError, choices
from edgeslim.measure.core import Measurer
from edgeslim.train import Hooks, TrainConfig, train_model


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf and .nan are typos


@dataclass
class PassResult:
    model: nn.Module | None
    spec: dict | None = None  # updated architecture spec when the pass changed structure
    onnx: Path | None = None  # a deployable ONNX the pass wrote itself (inside ctx.stage_dir)
    artifact: Path | None = None  # the stored artifact when it is not the ONNX file (e.g. an .eshare file)
    notes: dict[str, Any] = field(default_factory=dict)  # merged into the stage's metrics
    carry: dict[str, Any] = field(default_factory=dict)  # state later passes see (ctx.carry)
    store_sparse: bool = False  # the pipeline also stores the stage's ONNX sparse-encoded (model.sparse.npz)


@dataclass
class RunContext:
    stage_dir: Path  # where a pass may write files (becomes the stage folder)
    spec: dict  # current architecture spec
    finetune: TrainConfig  # the recipe's default fine-tuning settings
    prev_onnx: Path | None = None
    carry: dict[str, Any] = field(default_factory=dict)  # what earlier passes left (read-only for passes)
    seed: int = 0
    quiet: bool = False
    teacher_loader: Callable[[], nn.Module] | None = None  # the baseline model, loaded on demand
    stage_name: str = ""  # the stage folder's final name in the run ("03_tflite"), "" outside a run
    measure: Measurer = field(default_factory=Measurer)  # the measurement core, for passes that must measure
    # the run's export of a PyTorch model to ONNX (the model handler's: cleaned graph, parity checked), for passes
    # that export a model other than the one they return (`passes.int8_recover`); None outside a run
    export: Callable[[nn.Module, Path], dict] | None = None

    def teacher(self) -> nn.Module:
        if self.teacher_loader is None:
            raise EdgeslimError("this pass needs a teacher model, but the run has no baseline")
        return self.teacher_loader()

    def finetune_model(
        self, model: nn.Module, task: Task, cfg: TrainConfig | None = None, desc: str = "finetune",
        hooks: Hooks | None = None, carry: dict[str, Any] | None = None,
    ) -> dict:
        """Fine-tune with the hooks earlier passes carried (mask keepers, distillation) plus `hooks`. `carry`:
        entries this pass will return in `PassResult.carry`, already active in its own fine-tuning."""
        merged = build_hooks(model, self, hooks, carry)
        return train_model(model, task, cfg or self.finetune, merged, desc=desc, quiet=self.quiet)


PassFn = Callable[[nn.Module | None, Task, Any, RunContext], PassResult]


ModelKind = Literal["torch", "onnx"]

# The kinds of model a run can start from (one handler each in `edgeslim.run`): an edgeslim zoo folder, a
# generic PyTorch program (torch.export .pt2, state dict + class, trusted pickle), an ONNX file (converted to a
# trainable module) and a Hugging Face text encoder. A pass declares the kinds it takes; the recipe parser
# refuses a pass that cannot take the run's model, naming the line.
SourceKind = Literal["zoo", "pytorch", "onnx", "text"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("zoo", "pytorch", "onnx", "text")
MODULE_KINDS: tuple[SourceKind, ...] = ("zoo", "pytorch", "onnx")  # an nn.Module on tensors
ZOO_ONLY: tuple[SourceKind, ...] = ("zoo",)  # passes that rebuild the model from its zoo spec
TEXT_ONLY: tuple[SourceKind, ...] = ("text",)
KIND_WORDS = {"zoo": "an edgeslim zoo model", "pytorch": "a PyTorch program", "onnx": "an ONNX file",
              "text": "a text encoder"}


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    config: type[PassConfig]
    consumes: ModelKind  # torch: needs the PyTorch model; onnx: needs only the previous stage's ONNX
    produces: ModelKind  # onnx: the stage is ONNX-only from here on
    must_be_last: bool
    about: str
    kinds: tuple[SourceKind, ...] = MODULE_KINDS  # the model kinds (handlers) the pass takes

    def takes(self, kind: str) -> bool:
        return kind in self.kinds

    @property
    def kind(self) -> ModelKind:
        """What `edgeslim passes` lists as the kind: the model the pass leaves behind."""
        return self.produces


PASSES: dict[str, PassInfo] = {}

# Fine-tuning hook factories keyed by a `ctx.carry` entry: if `carry[name]` is set, the factory's hooks
# are merged into every later fine-tuning. Resumable because carry is stored with each stage.
HookFactory = Callable[[nn.Module, RunContext, Any], Hooks]
FINETUNE_HOOKS: dict[str, HookFactory] = {}


FnT = TypeVar("FnT", bound=Callable[..., PassResult])


def register(name: str, config: type[PassConfig], *, consumes: ModelKind = "torch", produces: ModelKind = "torch",
             must_be_last: bool = False, kinds: tuple[SourceKind, ...] = MODULE_KINDS) -> Callable[[FnT], FnT]:
    """Register `fn` as the pass `name` with its config class, what it consumes and produces, and the model
    kinds it takes (`SOURCE_KINDS`; default: every model that is an nn.Module on tensors)."""

    def deco(fn: FnT) -> FnT:
        if any(i.config is config and i.name != name for i in PASSES.values()):
            raise AssertionError(f"pass '{name}': config {config.__name__} already belongs to another pass")
        about = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        if not kinds or set(kinds) - set(SOURCE_KINDS):
            raise AssertionError(f"pass '{name}': kinds {kinds} not within {SOURCE_KINDS}")
        PASSES[name] = PassInfo(name, fn, config, consumes, produces, must_be_last, about, tuple(kinds))
        return fn

    return deco


def register_hook(name: str) -> Callable[[HookFactory], HookFactory]:
    def deco(fn: HookFactory) -> HookFactory:
        FINETUNE_HOOKS[name] = fn
        return fn

    return deco


def build_hooks(model: nn.Module, ctx: RunContext, extra: Hooks | None = None,
                carry: dict[str, Any] | None = None) -> Hooks:
    """The hooks of every carried entry (`ctx.carry` plus `carry`) merged with `extra`."""
    out = Hooks()
    entries = {**ctx.carry, **(carry or {})}
    parts = [FINETUNE_HOOKS[k](model, ctx, v) for k, v in entries.items() if k in FINETUNE_HOOKS and v]
    if extra is not None:
        parts.append(extra)
    for h in parts:
        if h.loss is not None:
            if out.loss is not None:
                raise EdgeslimError("two passes both replace the fine-tuning loss; keep one of them")
            out.loss = h.loss
        out.extra_losses += h.extra_losses
        out.after_step += h.after_step
        out.after_epoch += h.after_epoch
    return out


def pass_for_config(config: PassConfig) -> PassInfo:
    """The pass whose config type `config` is (each pass has its own config class)."""
    for info in PASSES.values():
        if type(config) is info.config:
            return info
    raise EdgeslimError(f"{type(config).__name__} is not the config of a registered pass; configs: "
                        f"{choices(i.config.__name__ for i in PASSES.values() if not i.name.startswith('_'))}")


def passes_for(kind: str) -> list[str]:
    """Names of the public passes that take models of `kind`."""
    return [n for n, i in PASSES.items() if i.takes(kind) and not n.startswith("_")]


def get_pass(name: str) -> PassInfo:
    if name not in PASSES:
        raise EdgeslimError(f"unknown pass '{name}'; valid: {choices(PASSES)}")
    return PASSES[name]
