"""Structured pruning helpers: what Torch-Pruning needs from us (an importance criterion, a schedule, the
layers it must not touch) and what the passes report (channel counts), plus the blocks depth pruning may
remove.

Torch-Pruning's dependency graph decides what must be pruned together (residual adds, depthwise convs,
concatenations, BatchNorm, the flatten into a classifier, attention head dims and FFN neurons of
transformer blocks); we only choose the importance criterion and the schedule. The pruned model is a
smaller dense model; its spec needs no edit: `resize_to_state_dict` resizes layers to the stored shapes.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError, choices
from edgeslim.models.probe import probe
from edgeslim.models.spec import get_module
from edgeslim.prune.masks import schedule_ratios
from edgeslim.train import is_reconstruction, torch_threads, train_threads

Importance = Literal["l1", "l2", "taylor", "bn_scale", "random"]


def make_importance(name: str):  # -> tp.importance.Importance
    import torch_pruning as tp

    table = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if name not in table:
        raise EdgeslimError(f"unknown importance '{name}'; valid: {choices(list(table))}")
    return table[name]()


def output_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """The Conv/Linear layer that runs last produces the model's output: its out-features are fixed."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: order.append(m))
        for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    probe(model, torch.zeros(2, *input_shape), hooks)
    if not order:
        raise EdgeslimError("structured pruning needs a model with Conv or Linear layers")
    return [order[-1]]


def model_ignored(model: nn.Module) -> list[nn.Module]:
    """Layers a model says channel pruning must keep whole (`prune_ignored()`), e.g. the zoo transformer's
    residual stream and attention heads, which a dependency graph cannot follow through the head reshape."""
    fn = getattr(model, "prune_ignored", None)
    return list(fn()) if callable(fn) else []


def accumulate_gradients(model: nn.Module, task: Task, batches: int, batch_size: int = 64, seed: int = 0) -> None:
    """Loss gradients on a few training batches (Taylor importance = |weight x gradient|)."""
    model.eval()  # BN statistics stay fixed; gradients still flow
    model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(seed)
    with torch_threads(train_threads(model, task.input_shape, batch_size)):
        for _ in range(batches):
            idx = rng.choice(len(task.x_train), min(batch_size, len(task.x_train)), replace=False)
            x, y = torch.from_numpy(task.x_train[idx]), torch.from_numpy(task.y_train[idx])
            out = model(x)
            loss = F.mse_loss(out, x) if is_reconstruction(model) else F.cross_entropy(out, y)
            loss.backward()


@contextmanager
def torch_pruning_errors(what: str = "structured pruning") -> Iterator[None]:
    """An exception raised inside Torch-Pruning (its dependency graph cannot follow this model's graph, e.g. a GRU,
    whose CPU autograd graph it cannot trace) becomes one line (EdgeslimError: exit 1, no traceback) that names
    the failure and the ways around it, instead of an internal error. Torch-Pruning's own warnings (loose
    parameters, recursion depth) are not shown: the user cannot act on them."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch_pruning")
            yield
    except EdgeslimError:
        raise
    except Exception as e:
        if not any("torch_pruning" in f.filename for f in traceback.extract_tb(e.__traceback__)):
            raise
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise EdgeslimError(f"{what}: Torch-Pruning cannot prune this model's graph ({type(e).__name__}: {first}); "
                            "use unstructured pruning (magnitude_prune) or a recipe without channel pruning "
                            "(e.g. `edgeslim optimize`)") from e


def blocked_by(dg, module: nn.Module, ignored: list[nn.Module]) -> str | None:  # dg: tp.DependencyGraph
    """Why Torch-Pruning's pruner would leave `module`'s output channels whole, or None when it can prune them.

    Its `MetaPruner` silently skips a group that also removes output channels of a layer it ignores: e.g. a
    reduction over the channel axis (a mean over a conv's channels) is traced as element-wise, so the conv's
    group runs on into a GRU's gates and the output Linear, which are kept whole. A ratio allocated to such a
    layer would never be applied."""
    pruner = dg.get_pruner_of_module(module)
    n = pruner.get_out_channels(module) if pruner is not None else None
    if n is None:
        return "Torch-Pruning has no output-channel pruner for it"
    group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
    names = {id(m): k for k, m in dg.model.named_modules()}
    keep = {id(m) for m in list(ignored) + list(dg.IGNORED_LAYERS_IN_TRACING)}
    for dep, _ in group:
        target = dep.target.module
        if target is not module and id(target) in keep and dg.is_out_channel_pruning_fn(dep.handler):
            return (f"its channel group reaches the output channels of {names.get(id(target), type(target).__name__)}, "
                    "which is kept whole (output, Linear/recurrent or unfollowable layer)")
    return None


def map_flattened_channels(dg) -> int:  # dg: tp.DependencyGraph
    """Give Torch-Pruning's reshape nodes the channel -> feature mapping its own pass leaves out; returns how many.

    Torch-Pruning 1.6 maps a pruned channel to its block of flattened features (a conv's C x H rows merged into
    an LSTM's or Linear's C*H inputs) only while no Linear in the model has a 3-D output (`DependencyGraph._2d_4d`)
    and only with the pre-2.0 autograd attribute `_saved_self_sizes`; otherwise the indices pass 1:1 and the
    consumer loses the wrong number of inputs (a CRNN with a [T, B, F] head: `index 1024 is out of bounds`, or a
    size mismatch in the first forward). Mapped here: a 4-D reshape input whose channel axis (the producer's
    count, found as Torch-Pruning finds it) is preceded only by size-1 axes and whose trailing product is the
    consumer's count, i.e. channel-major blocks; any other layout (an NHWC flatten) is left as it was."""
    import math

    import torch_pruning as tp
    from torch_pruning.dependency import shape_infer
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    if dg._2d_4d:
        return 0  # Torch-Pruning mapped them itself
    done = 0
    for node in dg.module2node.values():
        if node.type != tp.ops.OPTYPE.RESHAPE:
            continue
        size = list(getattr(node.grad_fn, "_saved_self_sym_sizes", getattr(node.grad_fn, "_saved_self_sizes", [])))
        if len(size) != 4:
            continue
        out_ch = next((c for c in (shape_infer.infer_in_channels_recursively(dg, n, [0]) for n in node.outputs)
                       if c is not None), None)
        in_ch = next((c for c in (shape_infer.infer_out_channels_recursively(dg, n, [0]) for n in node.inputs)
                      if c is not None), None)
        if not out_ch or not in_ch or out_ch <= in_ch or out_ch % in_ch:
            continue
        axis = next((k for k in range(1, 4) if int(size[k]) == in_ch and math.prod(int(d) for d in size[1:k]) == 1),
                    None)
        if axis is None or math.prod(int(d) for d in size[axis:]) != out_ch:
            continue
        stride = out_ch // in_ch
        for in_node in node.inputs:
            for dep in node.dependencies:
                if dep.target == in_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=True)
            for dep in in_node.dependencies:
                if dep.target == node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=False)
        done += 1
    return done


def make_pruner(
    model: nn.Module, input_shape: tuple[int, ...], *, ratio: float, importance: str = "l2", scope: str = "layer",
    schedule: str = "oneshot", rounds: int = 1, round_to: int | None = None,
    layer_ratios: dict[str, float] | None = None,
) -> tuple:  # (tp.pruner.MetaPruner, steps)
    """Torch-Pruning's pruner for `ratio` of the channels of each group (or `layer_ratios`: module path ->
    ratio), ranked by `importance`, over `rounds` steps of `schedule`; the output layer is never pruned, nor
    the layers the model lists in `prune_ignored()`."""
    import torch_pruning as tp

    if importance == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise EdgeslimError("structured_prune: importance 'bn_scale' needs BatchNorm layers; this model has "
                            "none (use l1, l2, taylor or random)")
    ratio_dict = None
    if layer_ratios:
        names = dict(model.named_modules())
        bad = [k for k in layer_ratios if k not in names]
        if bad:
            raise EdgeslimError(f"structured_prune: layer_ratios names unknown modules {bad}; valid: "
                                f"{choices([n for n, _ in model.named_modules() if n])}")
        # a ratio under one channel removes none: Torch-Pruning keeps int(n x (1 - r)) channels, so any r > 0
        # would remove one channel of every listed layer (a scaled-down try of `sensitivity_prune` at x0.001
        # still cut 5% of PP-OCRv4 det's MACs and most of its fidelity)
        counts = channel_counts(model)
        ratio_dict = {names[k]: v for k, v in layer_ratios.items() if int(v * counts.get(k, 0)) >= 1}
    steps = 1 if schedule == "oneshot" else rounds

    def scheduler(r: float, n: int) -> list[float]:
        return [0.0] + schedule_ratios(r, n, schedule)

    class Pruner(tp.pruner.MetaPruner):
        def step(self, interactive: bool = False):  # type: ignore[no-untyped-def]
            with torch_pruning_errors():
                return super().step(interactive)

    with torch_pruning_errors():
        pruner = Pruner(
            model, torch.zeros(2, *input_shape), make_importance(importance),
            global_pruning=scope == "global", pruning_ratio=ratio, pruning_ratio_dict=ratio_dict,
            iterative_steps=steps, iterative_pruning_ratio_scheduler=scheduler,
            ignored_layers=output_layers(model, input_shape) + model_ignored(model), round_to=round_to,
        )
        map_flattened_channels(pruner.DG)
    return pruner, steps


def channel_counts(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}


def removable_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Blocks that can become identity: sub-modules with >= 2 Conv/Linear layers whose output shape equals
    their input shape (residual blocks with an identity shortcut, stride-1 same-width blocks); the
    innermost such modules only."""
    shapes: dict[str, tuple] = {}

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor) and inp and isinstance(inp[0], torch.Tensor):
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))
        return fn

    def n_layers(m: nn.Module) -> int:
        return sum(isinstance(s, (nn.Linear, nn.modules.conv._ConvNd)) for s in m.modules())

    cands = [n for n, m in model.named_modules() if n and n_layers(m) >= 2]
    hs = [get_module(model, n).register_forward_hook(hook(n)) for n in cands]
    probe(model, torch.zeros(2, *input_shape), hs)
    ok = [n for n in cands if n in shapes and shapes[n][0] == shapes[n][1]]
    return [n for n in ok if not any(o != n and o.startswith(n + ".") for o in ok)]
