"""Where training runs: the one place edgeslim chooses a PyTorch device.

`auto` (the default) trains on a CUDA GPU when PyTorch sees one and on the CPU otherwise; `cpu` and `cuda`
force one (asking for `cuda` where there is none is one line, exit 1). Only training moves: fine-tuning,
distillation, QAT, the text-encoder distillation and search trials (`edgeslim.train.train_model`,
`edgeslim.nlp.distill`). Models go back to the CPU when a training ends, so export, ONNX Runtime and every
measurement are the same whatever the accelerator (they stay on the device profile's runtime).

The CLI's `--accelerator` (train, run, distill, search) and the API (`api.train/run/distill/search`,
`accelerator=`) set it for the job with `use(...)`; code that trains reads it with `current()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, get_args

import torch
from torch import nn

from edgeslim.errors import EdgeslimError

Accelerator = Literal["auto", "cpu", "cuda"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
_asked: ContextVar[str] = ContextVar("edgeslim_accelerator", default="auto")


def pick(accelerator: str = "auto") -> torch.device:
    """The torch device for `accelerator`: auto = cuda if `torch.cuda.is_available()` else cpu."""
    if accelerator not in ACCELERATORS:
        raise EdgeslimError(f"--accelerator {accelerator!r}: valid values are {', '.join(ACCELERATORS)}")
    if accelerator == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "cuda":
        raise EdgeslimError("--accelerator cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is "
                            f"False; torch {torch.__version__}); use --accelerator auto or cpu")
    return torch.device("cpu")


@contextmanager
def use(accelerator: str) -> Iterator[torch.device]:
    """Inside the block, training picks `accelerator` (validated here, before any work starts)."""
    dev = pick(accelerator)
    token = _asked.set(accelerator)
    try:
        yield dev
    finally:
        _asked.reset(token)


def current() -> torch.device:
    """The device training uses now (`use`, default auto)."""
    return pick(_asked.get())


def describe(dev: torch.device | None = None) -> str:
    """What run.json records: `cpu`, or `cuda (GPU name)`."""
    dev = dev if dev is not None else current()
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


def device_of(model: nn.Module) -> torch.device:
    """Where `model`'s first parameter or buffer lives (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def on_device(model: nn.Module, dev: torch.device) -> Iterator[nn.Module]:
    """`model` on `dev` inside the block, back where it was after (parameters keep their identity, so hooks
    that hold them still work)."""
    home = device_of(model)
    if home == dev:
        yield model
        return
    model.to(dev)
    try:
        yield model
    finally:
        model.to(home)
