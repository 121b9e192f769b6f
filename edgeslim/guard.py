"""Numerical faults in training: a NaN or infinite loss rolls back instead of ruining the run.

The trainer (`edgeslim.train.fit`, used by training, every pass's fine-tuning, QAT and distillation)
keeps the state at the end of the last good epoch: weights, optimizer and scheduler. When a loss is not
finite, it restores that state, multiplies the learning rate by `factor` (0.5) and runs the epoch again
(the same batches: each epoch's order is seeded). After `max_retries` such rollbacks it stops with one
line; the model is left holding the last good weights, which the caller may keep (`edgeslim train` saves
them; a run keeps its finished stages).

The snapshot is an in-memory copy per epoch: about twice the weights (Adam keeps two moments), which
is small next to training's activations for the models edgeslim targets.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edgeslim.errors import EdgeslimError


class NonFiniteLoss(Exception):
    """Raised inside an epoch; `DivergenceGuard.rollback` handles it."""

    def __init__(self, value: float, epoch: int, step: int):
        super().__init__(f"loss {value} at epoch {epoch + 1}, step {step + 1}")
        self.value, self.epoch, self.step = value, epoch, step


class TrainingDiverged(EdgeslimError):
    """Training stopped after its rollbacks; the model holds the last good weights (`good_epoch`)."""

    def __init__(self, msg: str, good_epoch: int):
        super().__init__(msg)
        self.good_epoch = good_epoch


class DivergenceGuard:
    """Snapshot at each epoch start; roll back, lower the learning rate and retry on a non-finite loss."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler | None, desc: str = "train",
                 max_retries: int = 3, factor: float = 0.5, quiet: bool = False):
        self.model, self.opt, self.sched = model, opt, sched
        self.desc, self.max_retries, self.factor, self.quiet = desc, max_retries, factor, quiet
        self.retries = 0
        self.events: list[dict] = []  # one per rollback: epoch, step, loss, lr before and after
        self._state: tuple[dict, dict, dict | None] | None = None
        self._epoch = 0

    def save(self, epoch: int) -> None:
        """Remember the state before `epoch` (0-based) as the last good one."""
        self._state = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()),
                       copy.deepcopy(self.sched.state_dict()) if self.sched is not None else None)
        self._epoch = epoch

    @staticmethod
    def check(loss: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(float(loss.detach().float().reshape(-1)[0]), epoch, step)

    def _restore(self) -> None:
        assert self._state is not None, "DivergenceGuard.save was never called"
        m, o, s = self._state
        self.model.load_state_dict(m)
        self.opt.load_state_dict(copy.deepcopy(o))
        if self.sched is not None and s is not None:
            self.sched.load_state_dict(copy.deepcopy(s))

    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def rollback(self, bad: NonFiniteLoss) -> None:
        """Back to the last good state with a lower learning rate; `TrainingDiverged` once retries run out."""
        self._restore()
        before = self.lr()
        if self.retries >= self.max_retries:
            tried = ", ".join(f"{e['lr_after']:.3g}" for e in self.events)
            raise TrainingDiverged(
                f"{self.desc}: training diverged ({bad}) and still did after {self.retries} rollbacks with a "
                f"lower learning rate ({tried}); stopped with the last good weights (end of epoch {self._epoch}"
                f"{', the starting weights' if self._epoch == 0 else ''}); lower the learning rate or check the "
                "data for NaN / huge values", self._epoch,
            )
        self.retries += 1
        self._scale_lr(self.factor)
        # the rollback must survive the next save(): keep the lowered rate in the snapshot
        self._state = (self._state[0], copy.deepcopy(self.opt.state_dict()),  # type: ignore[index]
                       copy.deepcopy(self.sched.state_dict()) if self.sched is not None else None)
        self.events.append({"epoch": bad.epoch + 1, "step": bad.step + 1,
                            "loss": None if math.isnan(bad.value) else bad.value,
                            "lr_before": before, "lr_after": self.lr()})
        if not self.quiet:
            print(f"[{self.desc}] loss is {bad.value} at epoch {bad.epoch + 1}, step {bad.step + 1}: rolled back "
                  f"to the end of epoch {self._epoch}, learning rate {before:.3g} -> {self.lr():.3g} "
                  f"(retry {self.retries} of {self.max_retries})", flush=True)

    def _scale_lr(self, f: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] *= f
            if "initial_lr" in g:
                g["initial_lr"] *= f
        if self.sched is not None:  # schedules recompute from base_lrs; scale them too
            self.sched.base_lrs = [b * f for b in self.sched.base_lrs]
            if hasattr(self.sched, "_last_lr"):
                self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
