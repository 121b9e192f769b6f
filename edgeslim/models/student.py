"""Student builder: derive a smaller student from a teacher's architecture spec.

`width` scales every width argument the zoo builder takes (channels, hidden sizes, MobileNet's alpha);
`depth` removes shape-preserving blocks (a residual block, a depthwise-separable block) through the
replayable `identity` edit, so a student is rebuilt from its spec like any other model. Teacher edits
(e.g. low-rank factors) are not copied: a student starts from the plain architecture, random weights.

A student may also be another zoo architecture: `overrides={"model": "gru", "hidden": 32}` builds
that model for the teacher's input shape and classes (e.g. a transformer teacher, a GRU student);
width and depth multipliers then do not apply, the arguments are the student's own.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from edgeslim.errors import EdgeslimError, choices
from edgeslim.models.probe import probe
from edgeslim.models.spec import add_edit, build_model, get_module, make_spec
from edgeslim.models.zoo import ZOO

# The width arguments of each zoo builder; `code` (the autoencoder bottleneck) stays as it is.
WIDTH_ARGS: dict[str, tuple[str, ...]] = {
    "lenet300": ("h1", "h2"),
    "resnet8": ("width",),
    "dscnn": ("width",),
    "cnn1d": ("width",),
    "mobilenetv1": ("alpha",),
    "autoencoder": ("hidden",),
    "gru": ("hidden",),
    "lstm": ("hidden",),
    "transformer": ("dim", "mlp"),
}

# Containers whose children are blocks that may be dropped when they keep the tensor shape.
BLOCKS: dict[str, list[str]] = {
    "resnet8": ["layer1", "layer2", "layer3"],
    "dscnn": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "mobilenetv1": [f"features.{i}" for i in range(4, 4 + 13)],
}


def _defaults(arch: str) -> dict[str, Any]:
    sig = inspect.signature(ZOO[arch].build)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def removable_arch_blocks(spec: dict) -> tuple[list[str], list[str]]:
    """(all blocks of the arch, the ones whose input and output shapes match and so may be dropped)."""
    names = BLOCKS.get(spec["arch"], [])
    if not names:
        return [], []
    model = build_model({**spec, "edits": []}).eval()
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for n in names:
        def hook(m: nn.Module, inp: tuple, out: torch.Tensor, n: str = n) -> None:
            shapes[n] = (tuple(inp[0].shape), tuple(out.shape))

        hooks.append(get_module(model, n).register_forward_hook(hook))
    probe(model, tuple(spec["input_shape"]), hooks)
    return names, [n for n in names if n in shapes and shapes[n][0] == shapes[n][1]]


def student_spec(
    teacher: dict, width: float = 0.5, depth: float = 1.0, overrides: dict[str, Any] | None = None
) -> dict:
    """The spec of a student: the teacher's arch with widths times `width` and about `depth` of its
    blocks (only shape-preserving blocks can go; the deepest go first). `overrides` sets builder
    arguments directly (e.g. `{"h1": 100, "h2": 30}`); with a `model` key naming another zoo
    architecture, the student is that model built with the other keys (`other_arch_spec`)."""
    overrides = dict(overrides or {})
    other = overrides.pop("model", None)
    if other is not None and other != teacher.get("arch"):
        return other_arch_spec(str(other), teacher, overrides)
    arch = teacher.get("arch")
    if arch == "pickle" or arch not in ZOO:
        raise EdgeslimError(
            f"the student builder needs a zoo model spec, got arch '{arch}'; zoo models: {choices(ZOO)}"
        )
    if width <= 0 or not 0 < depth <= 1:
        raise EdgeslimError(f"student width must be > 0 and depth in (0, 1]; got width={width}, depth={depth}")
    kwargs = {**_defaults(arch), **teacher.get("kwargs", {})}
    names = WIDTH_ARGS.get(arch, ())
    if width != 1.0 and not names:
        raise EdgeslimError(
            f"'{arch}' has no width setting in the zoo; the student builder scales: {choices(WIDTH_ARGS)} "
            "(or give the student's arguments in `student`)"
        )
    new: dict[str, Any] = {}
    for k in names:
        v = kwargs[k]
        new[k] = float(v) * width if isinstance(v, float) else max(1, int(round(v * width)))
    new.update(overrides or {})
    spec = make_spec(arch, tuple(teacher["input_shape"]), teacher["num_classes"],
                     **{k: v for k, v in {**teacher.get("kwargs", {}), **new}.items()})
    if depth < 1.0:
        blocks, removable = removable_arch_blocks(spec)
        if not blocks:
            raise EdgeslimError(f"'{arch}' has no removable blocks; depth multipliers work for {choices(BLOCKS)}")
        drop = min(len(removable), len(blocks) - int(round(len(blocks) * depth)))
        if drop <= 0:
            raise EdgeslimError(
                f"depth {depth} removes no block of '{arch}' ({len(blocks)} blocks, "
                f"{len(removable)} removable: {', '.join(removable) or 'none'})"
            )
        for n in reversed(removable[-drop:] if drop else []):
            spec = add_edit(spec, "identity", module=n)
    return spec


def other_arch_spec(arch: str, teacher: dict, kwargs: dict[str, Any]) -> dict:
    """The spec of a student of zoo architecture `arch` (its defaults + `kwargs`) for the teacher's
    input shape and classes; checked by building it once."""
    if arch not in ZOO:
        raise EdgeslimError(f"student model '{arch}' is not in the zoo; zoo models: {choices(ZOO)}")
    if not teacher.get("input_shape") or teacher.get("num_classes") is None:
        raise EdgeslimError(f"a '{arch}' student needs the teacher's input shape and classes; the teacher spec "
                            f"(arch '{teacher.get('arch')}') has none")
    spec = make_spec(arch, tuple(teacher["input_shape"]), int(teacher["num_classes"]), **kwargs)
    build_model(spec)  # bad arguments fail here, with the model named
    return spec


def build_student(teacher: dict, width: float = 0.5, depth: float = 1.0,
                  overrides: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    spec = student_spec(teacher, width, depth, overrides)
    return build_model(spec), spec
