"""A model whose structure structured pruning cannot handle stops the run in one line, not a traceback.

Torch-Pruning's dependency graph, or a graph converted from ONNX (`edgeslim.onnxtorch`), can fail on
structures they do not support (an IndexError deep in Torch-Pruning on ddddocr's common.onnx, a shape
mismatch in the pruned model's forward). That is a limit of the pass on this model, not a bug the user
can do nothing about: `structure_errors` turns such an exception into one EdgeslimError naming the pass,
the stage and, where the traceback shows it, the layer (module path and type) it failed at, with what to
do (keep that layer with `layer_ratios: {LAYER: 0}`, or take the post-training path `edgeslim optimize`).
The stage folder is never written (the stage loop's `fsutil.atomic_dir` drops it), so the run can be
resumed with a changed recipe.

An exception counts as structural when its traceback passes through Torch-Pruning, through the ONNX
converter's modules, or through the forward of one of the model's own layers; anything else (a bug of
ours) is re-raised as it is.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import torch
from torch import nn

from edgeslim.errors import EdgeslimError

F = TypeVar("F", bound=Callable[..., Any])
_MARKERS = (os.sep + "torch_pruning" + os.sep, os.sep + "onnxtorch" + os.sep)


def _frames(tb: TracebackType | None) -> list:
    out = []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


def failing_layer(e: BaseException, model: nn.Module) -> tuple[str, str] | None:
    """(module path, module type) of the innermost layer of `model` found in the traceback's frames
    (a pruner's `layer`/`module` argument, or `self` in a layer's forward), or None."""
    names = {id(m): n for n, m in model.named_modules() if n}
    for fr in reversed(_frames(e.__traceback__)):
        for v in fr.f_locals.values():
            if isinstance(v, nn.Module) and id(v) in names:
                return names[id(v)], type(v).__name__
    return None


def structural(e: BaseException, model: nn.Module) -> bool:
    """True when `e` came from Torch-Pruning, the ONNX converter's modules or a layer of `model`."""
    if any(m in fr.f_code.co_filename for fr in _frames(e.__traceback__) for m in _MARKERS):
        return True
    return failing_layer(e, model) is not None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0][:200]}" if s else type(e).__name__


@contextmanager
def structure_errors(pass_name: str, stage: str, model: nn.Module | None) -> Iterator[None]:
    """Turn a structural failure inside the block into one EdgeslimError line (module docstring)."""
    try:
        yield
    except (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:
        e: BaseException = err
        if isinstance(err, EdgeslimError):  # `prune.structured.torch_pruning_errors` already made it one line:
            if err.__cause__ is None:        # named again here with the pass, the stage and the layer
                raise
            e = err.__cause__
        if model is None or not structural(e, model):
            raise
        at = failing_layer(e, model)
        where = f" at layer '{at[0]}' ({at[1]})" if at else ""
        keep = f"keep it with layer_ratios: {{{at[0]}: 0}}, or " if at else ""
        raise EdgeslimError(
            f"{pass_name} (stage {stage or '?'}): structured pruning cannot handle this model's structure{where} "
            f"({_first_line(e)}); {keep}use unstructured pruning (magnitude_prune), a recipe without structured "
            "pruning, or edgeslim optimize "
            "(post-training, no pruning)") from None


def guarded(pass_name: str) -> Callable[[F], F]:
    """Decorator for a pruning pass `fn(model, task, cfg, ctx)`: its structural failures become one line
    naming the pass and ctx.stage_name (`structure_errors`)."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(model: nn.Module | None, task: Any, cfg: Any, ctx: Any, *a: Any, **kw: Any) -> Any:
            with structure_errors(pass_name, getattr(ctx, "stage_name", ""), model):
                return fn(model, task, cfg, ctx, *a, **kw)
        return run  # type: ignore[return-value]
    return wrap
