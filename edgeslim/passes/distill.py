"""`distill`: train a smaller student (or the current model) from the run's baseline with knowledge
distillation (`edgeslim.distill`). The student is built from the teacher spec (`models.student`), or is
another zoo architecture (`student: {model: gru, hidden: 48}`, e.g. a transformer teacher's GRU); with
`keep: true` the pass leaves a `distill` entry in the run's carry so every later fine-tuning (pruning,
low-rank, clustering) also distils from the same teachers, on the same transfer set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeslim import models
from edgeslim.data import Task
from edgeslim.data.transfer import generate_count
from edgeslim.distill.train import KD_FIELDS, KDSettings, distill_model
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import count_macs, count_params
from edgeslim.models.student import build_student
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.train import TrainConfig, evaluate


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
    teachers: list[str] = Field(default_factory=list, description="extra teacher model folders (multi-teacher)",
                                json_schema_extra={"path": "input"})
    teacher_weights: list[Annotated[float, Field(ge=0)]] | None = None
    cache: bool = Field(True, description="cache teacher outputs on the training set (fixed transfer set)")
    mixup: float | None = Field(None, gt=0.0, description="distil on mixup inputs (Beta parameter) the teacher "
                                "labels on the fly; the label term stays on clean inputs")
    transfer: str | None = Field(None, description="unlabelled inputs the teachers label for the KD term: an "
                                 ".npz (array 'x') or .npy file shaped like the task's inputs, or 'generate:N' "
                                 "for a task with a generator (mnist1d)", json_schema_extra={"path": "input"})
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


def kd_settings(cfg: Distill) -> KDSettings:
    """The KD terms of `distill_model` that `cfg` sets (its other fields say which student and teachers)."""
    return KDSettings(**{k: getattr(cfg, k) for k in KD_FIELDS})


def _load_teachers(ctx: RunContext, paths: Sequence[str], task: Task) -> list[nn.Module]:
    ts = [ctx.teacher()]
    for p in paths:
        m, spec = models.load_model(Path(p))
        if spec.get("input_shape") and tuple(spec["input_shape"]) != task.input_shape:
            raise EdgeslimError(f"teacher {p}: expects inputs {tuple(spec['input_shape'])}, task has {task.input_shape}")
        ts.append(m)
    return ts


@register("distill", Distill)
def distill_student(model: nn.Module | None, task: Task, cfg: Distill, ctx: RunContext) -> PassResult:
    """Knowledge distillation into a smaller student (or the current model) from the run's baseline."""
    assert model is not None
    teachers = _load_teachers(ctx, cfg.teachers, task)
    if cfg.init == "student":
        torch.manual_seed(cfg.train.seed)
        student, spec = build_student(student_base(ctx.spec, task, cfg), cfg.width, cfg.depth, cfg.student)
    else:
        student, spec = model, ctx.spec
    hist = distill_model(student, teachers, task, cfg.train, kd_settings(cfg), quiet=ctx.quiet)
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
