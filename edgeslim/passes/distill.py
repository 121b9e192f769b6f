"""Knowledge distillation: logit KD, feature KD, self-distillation and multi-teacher KD.

- **Logit KD** (Hinton 2015): `alpha * T^2 * KL(p_teacher(T) || p_student(T)) + (1 - alpha) * CE(labels)`.
- **Feature KD** (FitNets): MSE between chosen intermediate outputs of student and teacher, through a
  learned 1x1 conv / linear adapter when widths differ (the teacher map is average-pooled to the
  student's spatial size when those differ). Adapters exist only during training.
- **Self-distillation** (Zhang 2019, "Be your own teacher"): auxiliary exits (pool + linear) on chosen
  student layers; the deepest output teaches every shallower exit. Exits are dropped after training.
- **Multi-teacher**: soft targets are the (weighted) average of the teachers' tempered probabilities.

Teachers run in inference mode (eval, no gradients). With `cache` their outputs on the training set (a
fixed transfer set) are computed once and looked up by sample.

The `distill` pass replaces the model with a student built from the teacher spec (edgeslim.models.student)
and trains it with KD. With `keep: true` it leaves a `distill` entry in the run's carry so every later
fine-tuning (pruning, low-rank, clustering) also distils from the same teachers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from edgeslim import models
from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.measure.macs import count_macs, count_params
from edgeslim.models.spec import get_module
from edgeslim.models.student import build_student
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register, register_hook
from edgeslim.train import Hooks, TrainConfig, evaluate, fit, is_reconstruction

# ---------------------------------------------------------------------------------------------- losses


def soft_targets(teacher_logits: Sequence[torch.Tensor], temperature: float,
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """Tempered teacher probabilities, averaged over teachers with `weights` (normalised; default equal)."""
    if not teacher_logits:
        raise ValueError("soft_targets needs at least one teacher")
    w = torch.tensor(weights if weights is not None else [1.0] * len(teacher_logits), dtype=torch.float32)
    if len(w) != len(teacher_logits) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"teacher weights {list(w.tolist())} do not fit {len(teacher_logits)} teachers")
    w = w / w.sum()
    return sum(wi * F.softmax(t.detach() / temperature, dim=1) for wi, t in zip(w, teacher_logits))


def kd_loss(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T^2 * KL(targets || softmax(student / T))`, batch mean. `targets` are probabilities (soft_targets)."""
    logp = F.log_softmax(student_logits / temperature, dim=1)
    kl = (targets * (torch.log(targets.clamp_min(1e-12)) - logp)).sum(1).mean()
    return kl * temperature**2


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor],
                  labels: torch.Tensor, temperature: float = 4.0, alpha: float = 0.9,
                  weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted sum `alpha * KD + (1 - alpha) * CE`; several teachers' soft targets are averaged."""
    teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    loss = alpha * kd_loss(student_logits, soft_targets(teachers, temperature, weights), temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


def feature_kd_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                    adapters: Sequence[nn.Module] | None = None) -> torch.Tensor:
    """Mean over layer pairs of MSE(adapter(student), teacher); the teacher map is average-pooled to the
    student's spatial size when they differ."""
    total = student_feats[0].new_zeros(())
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        a = adapters[i] if adapters is not None else nn.Identity()
        s2 = a(s)
        t2 = t.detach()
        if s2.dim() > 2 and tuple(t2.shape[2:]) != tuple(s2.shape[2:]):
            pool = F.adaptive_avg_pool2d if s2.dim() == 4 else F.adaptive_avg_pool1d
            t2 = pool(t2, s2.shape[2:])
        if s2.shape != t2.shape:
            raise EdgeslimError(f"feature KD: adapted student map {tuple(s2.shape)} != teacher map {tuple(t2.shape)}")
        total = total + F.mse_loss(s2, t2)
    return total / max(1, len(student_feats))


def self_distill_loss(exit_logits: Sequence[torch.Tensor], final_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Deeper teaches shallower: every auxiliary exit learns from the labels and from the (detached)
    final output's soft targets. Mean over exits."""
    total = final_logits.new_zeros(())
    target = soft_targets([final_logits.detach()], temperature)
    for e in exit_logits:
        total = total + alpha * kd_loss(e, target, temperature) + (1 - alpha) * F.cross_entropy(e, labels)
    return total / max(1, len(exit_logits))


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """Identity when channel widths match, else a learned linear (N, C) or 1x1 conv (N, C, ...) adapter."""
    cs, ct = int(student_shape[1]), int(teacher_shape[1])
    if cs == ct:
        return nn.Identity()
    if len(student_shape) == 2:
        return nn.Linear(cs, ct, bias=False)
    conv = nn.Conv2d if len(student_shape) == 4 else nn.Conv1d
    return conv(cs, ct, 1, bias=False)


class ExitHead(nn.Module):
    """An auxiliary classifier on an intermediate map: global average pool, then linear."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(2).mean(2)
        return self.fc(x)


# ---------------------------------------------------------------------------------------------- teachers


class FeatureTap:
    """Forward hooks that keep the latest outputs of named layers."""

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for n in layers:
            try:
                mod = get_module(model, n)
            except AttributeError:
                valid = [k for k, _ in model.named_modules() if k]
                raise EdgeslimError(f"no layer '{n}' in {type(model).__name__}; layers: {', '.join(valid)}") from None

            def hook(m: nn.Module, inp: tuple, out: torch.Tensor, n: str = n) -> None:
                self.out[n] = out

            self.handles.append(mod.register_forward_hook(hook))

    def get(self, layers: Sequence[str]) -> list[torch.Tensor]:
        return [self.out[n] for n in layers]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _row_keys(x: torch.Tensor) -> list[bytes]:
    arr = np.ascontiguousarray(x.detach().cpu().numpy())
    return [hashlib.blake2b(r.tobytes(), digest_size=12).digest() for r in arr]


class Teachers:
    """One or more teachers in inference mode. `__call__(x)` returns (logits per teacher, features of the
    first teacher at `layers`). With `cache`, each sample's outputs are computed once (a fixed transfer
    set: the first epoch fills the cache, later epochs and later fine-tunings only look up)."""

    def __init__(self, teachers: Sequence[nn.Module], layers: Sequence[str] = (), cache: bool = True):
        self.models = [t.eval() for t in teachers]
        for t in self.models:
            for p in t.parameters():
                p.requires_grad_(False)
        self.layers = list(layers)
        self.tap = FeatureTap(self.models[0], self.layers) if self.layers else None
        self.use_cache = cache
        self.cache: dict[bytes, list[torch.Tensor]] = {}
        self.hits = self.misses = 0

    @torch.no_grad()  # not inference_mode: its tensors cannot be saved for the student's backward
    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        for t in self.models:
            t.eval()
        res = [t(x).clone() for t in self.models]
        if self.tap is not None:
            self.models[0](x)
            res += [f.clone() for f in self.tap.get(self.layers)]
        return res

    def __call__(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n_t = len(self.models)
        if not self.use_cache:
            self.misses += len(x)
            out = self._run(x)
            return out[:n_t], out[n_t:]
        keys = _row_keys(x)
        rows = [self.cache.get(k) for k in keys]
        if all(r is not None for r in rows):
            self.hits += len(x)
            full: list[list[torch.Tensor]] = [r for r in rows if r is not None]
            out = [torch.stack([r[j] for r in full]) for j in range(len(full[0]))]
        else:
            self.misses += len(x)
            out = self._run(x)
            for i, k in enumerate(keys):
                self.cache[k] = [o[i] for o in out]
        return out[:n_t], out[n_t:]

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()


def load_teachers(ctx: RunContext, paths: Sequence[str], task: Task) -> list[nn.Module]:
    ts = [ctx.teacher()]
    for p in paths:
        m, spec = models.load_model(Path(p))
        if spec.get("input_shape") and tuple(spec["input_shape"]) != task.input_shape:
            raise EdgeslimError(f"teacher {p}: expects inputs {tuple(spec['input_shape'])}, task has {task.input_shape}")
        ts.append(m)
    return ts


def mix_inputs(x: torch.Tensor, gen: torch.Generator, beta: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup of a batch with a shuffled copy of itself: (mixed inputs, the permutation, lambda)."""
    lam = float(torch.distributions.Beta(beta, beta).sample()) if beta > 0 else 0.5
    perm = torch.randperm(len(x), generator=gen)
    return lam * x + (1 - lam) * x[perm], perm, lam


def kd_loss_fn(teachers: Teachers, temperature: float, alpha: float, weights: Sequence[float] | None,
               feat: tuple[FeatureTap, list[str], nn.ModuleDict, float] | None = None,
               exits: tuple[FeatureTap, list[str], nn.ModuleDict, float] | None = None,
               mixup: float | None = None, seed: int = 0,
               ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trainer loss (`Hooks.loss`) combining the KD terms that are switched on.

    With `mixup` (a Beta parameter) the distillation terms are computed on mixup-interpolated inputs
    that the teacher labels on the fly (a transfer set larger than the labelled one, "function matching"
    in Beyer et al. 2022); the label term stays on the clean batch."""
    gen = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        xs, s_out = x, out
        if mixup is not None and model.training:
            xs, _, _ = mix_inputs(x, gen, mixup)
            s_out = model(xs)  # student (and its feature taps) on the mixed batch
            t_raw = teachers._run(xs)
            t_logits, t_feats = t_raw[: len(teachers.models)], t_raw[len(teachers.models) :]
        else:
            t_logits, t_feats = teachers(x)
        if is_reconstruction(model):  # regression: match the teachers' outputs
            t_mean = torch.stack(t_logits).mean(0)
            total = alpha * F.mse_loss(s_out, t_mean) + (1 - alpha) * F.mse_loss(out, x)
        elif alpha > 0:
            total = alpha * kd_loss(s_out, soft_targets(t_logits, temperature, weights), temperature)
            if alpha < 1:
                total = total + (1 - alpha) * F.cross_entropy(out, y)
        else:
            total = F.cross_entropy(out, y)
        if feat is not None:
            tap, layers, adapters, w = feat
            s_feats = tap.get(layers)
            total = total + w * feature_kd_loss(s_feats, t_feats, [adapters[str(i)] for i in range(len(layers))])
        if exits is not None:
            tap, layers, heads, w = exits
            logits = [heads[str(i)](f) for i, f in enumerate(tap.get(layers))]
            total = total + w * self_distill_loss(logits, out, y, temperature, 0.5)
        return total

    return loss


# ---------------------------------------------------------------------------------------------- the pass


class Distill(PassConfig):
    init: Literal["student", "current"] = Field(
        "student", description="'student': build a smaller student (width/depth); 'current': distil into this model"
    )
    width: float = Field(0.5, gt=0.0, le=4.0, description="student width multiplier")
    depth: float = Field(1.0, gt=0.0, le=1.0, description="fraction of removable blocks the student keeps")
    student: dict[str, Any] = Field(default_factory=dict, description="zoo arguments set directly, e.g. {h1: 100}")
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="weight of the KD term; 1 - alpha on the labels")
    features: list[tuple[str, str]] = Field(default_factory=list, description="(student layer, teacher layer) pairs")
    feature_weight: float = Field(1.0, ge=0.0)
    self_distill: list[str] = Field(default_factory=list, description="student layers that get auxiliary exits")
    self_weight: float = Field(1.0, ge=0.0)
    teachers: list[str] = Field(default_factory=list, description="extra teacher model folders (multi-teacher)")
    teacher_weights: list[float] | None = None
    cache: bool = Field(True, description="cache teacher outputs on the training set (fixed transfer set)")
    mixup: float | None = Field(None, gt=0.0, description="distil on mixup inputs (Beta parameter) the teacher "
                                "labels on the fly; the label term stays on clean inputs")
    keep: bool = Field(True, description="keep logit KD active in later passes' fine-tuning")
    train: TrainConfig = Field(default_factory=TrainConfig, description="student training (from scratch)")

    @model_validator(mode="after")
    def _weights(self) -> Distill:
        if self.mixup is not None and self.self_distill:
            raise ValueError("self_distill exits learn from the clean batch; use it without mixup")
        if self.teacher_weights is not None and len(self.teacher_weights) != 1 + len(self.teachers):
            raise ValueError(
                f"teacher_weights needs {1 + len(self.teachers)} values (the run's baseline + {len(self.teachers)} "
                "extra teachers)"
            )
        return self


def _probe(model: nn.Module, layers: Sequence[str], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    tap = FeatureTap(model, layers)
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *input_shape))
    model.train(was)
    shapes = [tuple(t.shape) for t in tap.get(layers)]
    tap.remove()
    return shapes


def distill_model(
    student: nn.Module, teachers: Sequence[nn.Module], task: Task, cfg: Distill, quiet: bool = False
) -> dict:
    """Train `student` in place with the KD terms of `cfg`. Returns the training history plus stats."""
    s_layers = [s for s, _ in cfg.features]
    t_layers = [t for _, t in cfg.features]
    tcache = Teachers(teachers, t_layers, cfg.cache)
    feat = exits = None
    aux = nn.Module()  # adapters and exits: trained with the student, dropped afterwards
    taps = []
    if cfg.features:
        s_shapes = _probe(student, s_layers, task.input_shape)
        t_shapes = _probe(teachers[0], t_layers, task.input_shape)
        aux.adapters = nn.ModuleDict({str(i): make_adapter(a, b) for i, (a, b) in enumerate(zip(s_shapes, t_shapes))})
        taps.append(FeatureTap(student, s_layers))
        feat = (taps[-1], s_layers, aux.adapters, cfg.feature_weight)
    if cfg.self_distill:
        if is_reconstruction(student):
            raise EdgeslimError("self-distillation adds classifier exits; it needs a classification model")
        shapes = _probe(student, cfg.self_distill, task.input_shape)
        aux.exits = nn.ModuleDict({str(i): ExitHead(s[1], task.num_classes) for i, s in enumerate(shapes)})
        taps.append(FeatureTap(student, cfg.self_distill))
        exits = (taps[-1], list(cfg.self_distill), aux.exits, cfg.self_weight)
    student._kd_aux = aux  # type: ignore[assignment]  # so the optimizer trains the adapters/exits
    try:
        loss = kd_loss_fn(tcache, cfg.temperature, cfg.alpha, cfg.teacher_weights, feat, exits, cfg.mixup,
                          cfg.train.seed)
        hist = fit(student, task, cfg.train, Hooks(loss=loss), desc="distill", quiet=quiet)
    finally:
        del student._kd_aux
        for t in taps:
            t.remove()
        tcache.close()
    hist["teacher_cache_hits"] = tcache.hits
    hist["teacher_cache_misses"] = tcache.misses
    return hist


@register("distill", Distill)
def distill(model: nn.Module | None, task: Task, cfg: Distill, ctx: RunContext) -> PassResult:
    """Knowledge distillation into a smaller student (or the current model) from the run's baseline."""
    assert model is not None
    teachers = load_teachers(ctx, cfg.teachers, task)
    if cfg.init == "student":
        torch.manual_seed(cfg.train.seed)
        student, spec = build_student(ctx.spec, cfg.width, cfg.depth, cfg.student)
    else:
        student, spec = model, ctx.spec
    hist = distill_model(student, teachers, task, cfg, ctx.quiet)
    params, _ = count_params(student)
    notes = {
        "val_accuracy": hist["val_accuracy"],
        "student": {k: spec.get(k) for k in ("arch", "kwargs", "edits")},
        "teacher_params": count_params(teachers[0])[0],
        "student_params": params,
        "teacher_macs": count_macs(teachers[0], task.input_shape),
        "teacher_test_accuracy": evaluate(teachers[0], task.x_test, task.y_test),
        "teachers": 1 + len(cfg.teachers),
        "teacher_cache_hits": hist["teacher_cache_hits"],
    }
    carry: dict[str, Any] = {}
    if cfg.keep:
        carry["distill"] = {
            "temperature": cfg.temperature, "alpha": cfg.alpha, "teachers": list(cfg.teachers),
            "teacher_weights": cfg.teacher_weights, "cache": cfg.cache, "mixup": cfg.mixup,
        }
    return PassResult(student, spec=spec if cfg.init == "student" else None, notes=notes, carry=carry)


@register_hook("distill")
def distill_hook(model: nn.Module, ctx: RunContext, value: dict) -> Hooks:
    """Later fine-tuning distils (logit KD) from the same teachers the `distill` pass used."""
    teachers_paths = value.get("teachers", [])
    state: dict[str, Any] = {}

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if "fn" not in state:
            ts = [ctx.teacher()] + [models.load_model(Path(p))[0] for p in teachers_paths]
            state["fn"] = kd_loss_fn(Teachers(ts, (), value.get("cache", True)), value["temperature"], value["alpha"],
                                     value.get("teacher_weights"), mixup=value.get("mixup"), seed=ctx.seed)
        return state["fn"](m, x, y, out)

    return Hooks(loss=loss)
