"""Knowledge distillation training: a student learns from one or more teachers with the KD terms of
`edgeslim.distill.kd` (logit, feature, self-distillation, mixup, transfer sets). Used by the `distill`
pass, the `edgeslim distill` command and, through `make_transfer`, KD during later fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from edgeslim.data import Task
from edgeslim.data.transfer import default_ratio, load_transfer
from edgeslim.distill.kd import ExitHead, FeatureTap, Teachers, TransferSet, kd_loss_fn, make_adapter
from edgeslim.errors import EdgeslimError
from edgeslim.train import Hooks, TrainConfig, is_reconstruction, train_model


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


@dataclass(frozen=True)
class KDSettings:
    """The KD terms of one distillation (`distill_model`): logit KD at `temperature` weighted `alpha` (1 - alpha
    on the labels), several teachers' soft targets averaged by `teacher_weights`, feature KD on (student layer,
    teacher layer) `features` pairs weighted `feature_weight`, self-distillation exits on `self_distill` layers
    weighted `self_weight`, mixup inputs (`mixup`: a Beta parameter) or a `transfer` set (file or generate:N)
    of unlabelled inputs, `transfer_ratio` of them per labelled sample each step (default: `default_ratio`).
    With `cache`, teacher outputs on the training set are computed once. The `distill` pass's config
    (`passes.distill.Distill`, validated) holds the same fields and maps onto this with `kd_settings`."""

    temperature: float = 4.0
    alpha: float = 0.9
    teacher_weights: Sequence[float] | None = None
    features: Sequence[tuple[str, str]] = ()
    feature_weight: float = 1.0
    self_distill: Sequence[str] = ()
    self_weight: float = 1.0
    cache: bool = True
    mixup: float | None = None
    transfer: str | None = None
    transfer_ratio: int | None = None


KD_FIELDS = tuple(f.name for f in fields(KDSettings))


def distill_model(student: nn.Module, teachers: Sequence[nn.Module], task: Task, train: TrainConfig,
                  kd: KDSettings | None = None, *, quiet: bool = False, checkpoint: Path | None = None) -> dict:
    """Train `student` in place from `teachers` (eval mode, no gradients) with `train`'s settings and the KD
    terms of `kd` (`KDSettings`; default: logit KD at T = 4, alpha 0.9). With `checkpoint`, an interrupted
    distillation resumes from its last finished epoch (`train.fit`). Returns the training history plus the
    teacher cache's hits and misses."""
    kd = kd or KDSettings()
    features, self_distill = kd.features, kd.self_distill
    s_layers = [s for s, _ in features]
    t_layers = [t for _, t in features]
    tcache = Teachers(teachers, t_layers, kd.cache)
    feat = exits = None
    aux = nn.Module()  # adapters and exits: trained with the student, dropped afterwards
    taps = []
    if features:
        s_shapes = _probe(student, s_layers, task.input_shape)
        t_shapes = _probe(teachers[0], t_layers, task.input_shape)
        aux.adapters = nn.ModuleDict({str(i): make_adapter(a, b) for i, (a, b) in enumerate(zip(s_shapes, t_shapes))})
        taps.append(FeatureTap(student, s_layers))
        feat = (taps[-1], s_layers, aux.adapters, kd.feature_weight)
    if self_distill:
        if is_reconstruction(student):
            raise EdgeslimError("self-distillation adds classifier exits; it needs a classification model")
        shapes = _probe(student, self_distill, task.input_shape)
        aux.exits = nn.ModuleDict({str(i): ExitHead(s[1], task.num_classes) for i, s in enumerate(shapes)})
        taps.append(FeatureTap(student, self_distill))
        exits = (taps[-1], list(self_distill), aux.exits, kd.self_weight)
    tset = make_transfer(kd.transfer, kd.transfer_ratio, teachers, task.name, task.input_shape, len(task.x_train),
                         train.seed, quiet)
    student._kd_aux = aux  # type: ignore[assignment]  # so the optimizer trains the adapters/exits
    try:
        loss = kd_loss_fn(tcache, kd.temperature, kd.alpha, kd.teacher_weights, feat, exits, kd.mixup, train.seed,
                          tset)
        hist = train_model(student, task, train, Hooks(loss=loss), desc="distill", quiet=quiet, checkpoint=checkpoint)
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
