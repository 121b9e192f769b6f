"""The `distill` pass: train a smaller student (or the current model) from the run's baseline with KD.

The student is built from the teacher spec (edgeslim.models.student) and trained with the KD terms the
config switches on (logit, feature, self-distillation, several teachers, mixup or a transfer set of
unlabelled inputs; the losses live in `edgeslim.kd`). Teachers run in inference mode (eval, no
gradients); with `cache` their outputs on the training set are computed once and looked up by sample.
With `keep: true` the pass leaves a `distill` entry in the run's carry so every later fine-tuning
(pruning, low-rank, clustering) also distils from the same teachers, on the same transfer set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeslim import models
from edgeslim.data import Task
from edgeslim.data.transfer import default_ratio, generate_count, load_transfer
from edgeslim.errors import EdgeslimError
from edgeslim.kd import ExitHead, FeatureTap, Teachers, TransferSet, kd_loss_fn, make_adapter
from edgeslim.measure.macs import count_macs, count_params
from edgeslim.models.student import build_student
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register, register_hook
from edgeslim.train import Hooks, TrainConfig, evaluate, fit, is_reconstruction


def load_teachers(ctx: RunContext, paths: Sequence[str], task: Task) -> list[nn.Module]:
    ts = [ctx.teacher()]
    for p in paths:
        m, spec = models.load_model(Path(p))
        if spec.get("input_shape") and tuple(spec["input_shape"]) != task.input_shape:
            raise EdgeslimError(f"teacher {p}: expects inputs {tuple(spec['input_shape'])}, task has {task.input_shape}")
        ts.append(m)
    return ts


# ---------------------------------------------------------------------------------------------- the pass


def student_base(teacher_spec: dict, task: Task, cfg: Distill) -> dict:
    """The teacher spec the student builder starts from; for a student of another architecture
    (`student.model`) the task supplies what the teacher spec lacks (a pickled teacher has no classes),
    and width/depth multipliers, which scale the teacher's own architecture, must not be set."""
    other = cfg.student.get("model")
    if other is None or other == teacher_spec.get("arch"):
        return teacher_spec
    given = sorted({"width", "depth"} & cfg.model_fields_set)
    if given:
        raise EdgeslimError(f"distill: {' and '.join(given)} scale the teacher's architecture; a '{other}' student "
                            "takes its own arguments in `student` (e.g. student: {model: gru, hidden: 32})")
    return {"input_shape": list(task.input_shape), "num_classes": task.num_classes, **teacher_spec}


class Distill(PassConfig):
    init: Literal["student", "current"] = Field(
        "student", description="'student': build a smaller student (width/depth); 'current': distil into this model"
    )
    width: float = Field(0.5, gt=0.0, le=4.0, description="student width multiplier")
    depth: float = Field(1.0, gt=0.0, le=1.0, description="fraction of removable blocks the student keeps")
    student: dict[str, Any] = Field(default_factory=dict, description="zoo arguments set directly, e.g. {h1: 100}; "
                                    "with `model` another zoo architecture, e.g. {model: gru, hidden: 32}")
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
    transfer: str | None = Field(None, description="unlabelled inputs the teachers label for the KD term: an "
                                 ".npz (array 'x') or .npy file shaped like the task's inputs, or 'generate:N' "
                                 "for a task with a generator (mnist1d)")
    transfer_ratio: int | None = Field(None, ge=1, le=64, description="transfer samples per labelled sample in "
                                       "each step; default: transfer size / training size, 1 to 8")
    keep: bool = Field(True, description="keep logit KD active in later passes' fine-tuning")
    train: TrainConfig = Field(default_factory=TrainConfig, description="student training (from scratch)")

    @model_validator(mode="after")
    def _weights(self) -> Distill:
        if self.mixup is not None and self.self_distill:
            raise ValueError("self_distill exits learn from the clean batch; use it without mixup")
        if self.mixup is not None and self.transfer is not None:
            raise ValueError("use either mixup or a transfer set, not both")
        if self.transfer is not None:
            generate_count(self.transfer)  # a bad generate:N fails when the recipe is parsed
        if "model" in self.student:
            from edgeslim.models.zoo import ZOO

            if self.student["model"] not in ZOO:
                raise ValueError(f"student.model '{self.student['model']}' is not in the zoo; valid: {', '.join(ZOO)}")
            if self.init != "student":
                raise ValueError("student.model builds a new student; it needs init: student")
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
    transfer = make_transfer(cfg.transfer, cfg.transfer_ratio, teachers, task.name, task.input_shape,
                             len(task.x_train), cfg.train.seed, quiet)
    student._kd_aux = aux  # type: ignore[assignment]  # so the optimizer trains the adapters/exits
    try:
        loss = kd_loss_fn(tcache, cfg.temperature, cfg.alpha, cfg.teacher_weights, feat, exits, cfg.mixup,
                          cfg.train.seed, transfer)
        hist = fit(student, task, cfg.train, Hooks(loss=loss), desc="distill", quiet=quiet)
    finally:
        del student._kd_aux
        for t in taps:
            t.remove()
        tcache.close()
    hist["teacher_cache_hits"] = tcache.hits
    hist["teacher_cache_misses"] = tcache.misses
    return hist


def make_transfer(spec: str | None, ratio: int | None, teachers: Sequence[nn.Module], task_name: str,
                  input_shape: tuple[int, ...], n_train: int, seed: int = 0, quiet: bool = True,
                  ) -> TransferSet | None:
    """Load the transfer set and label it with the teachers; `ratio` defaults to `default_ratio`."""
    if spec is None:
        return None
    x = load_transfer(spec, task_name, input_shape, seed=seed)
    r = ratio or default_ratio(len(x), n_train)
    if not quiet:
        print(f"[distill] transfer set: {len(x):,} unlabelled inputs, {r} per labelled sample each step", flush=True)
    return TransferSet(x, teachers, r, seed=seed)


@register("distill", Distill)
def distill(model: nn.Module | None, task: Task, cfg: Distill, ctx: RunContext) -> PassResult:
    """Knowledge distillation into a smaller student (or the current model) from the run's baseline."""
    assert model is not None
    teachers = load_teachers(ctx, cfg.teachers, task)
    if cfg.init == "student":
        torch.manual_seed(cfg.train.seed)
        student, spec = build_student(student_base(ctx.spec, task, cfg), cfg.width, cfg.depth, cfg.student)
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
        "transfer": cfg.transfer,
    }
    carry: dict[str, Any] = {}
    if cfg.keep:
        carry["distill"] = {
            "temperature": cfg.temperature, "alpha": cfg.alpha, "teachers": list(cfg.teachers),
            "teacher_weights": cfg.teacher_weights, "cache": cfg.cache, "mixup": cfg.mixup,
            "transfer": cfg.transfer, "transfer_ratio": cfg.transfer_ratio,
            "task": task.name, "input_shape": list(task.input_shape), "n_train": len(task.x_train),
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
            transfer = None
            if value.get("transfer"):
                transfer = make_transfer(value["transfer"], value.get("transfer_ratio"), ts, value["task"],
                                         tuple(value["input_shape"]), value["n_train"], ctx.seed)
            state["fn"] = kd_loss_fn(Teachers(ts, (), value.get("cache", True)), value["temperature"], value["alpha"],
                                     value.get("teacher_weights"), mixup=value.get("mixup"), seed=ctx.seed,
                                     transfer=transfer)
        return state["fn"](m, x, y, out)

    return Hooks(loss=loss)
