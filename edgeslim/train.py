"""A small trainer with hooks. Passes use it to fine-tune (mask keepers run after each step) and to
distil (a replacement loss). Progress is a Rich bar on a terminal and plain log lines otherwise."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgeslim import accelerator, interrupt, resources
from edgeslim.data import Task
from edgeslim.guard import DivergenceGuard, NonFiniteLoss, TrainingDiverged
from edgeslim.onnxkit.scoring import OutputPart, Score, score_rows, score_stream

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[nn.Module], None]


class TrainConfig(BaseModel):
    """Training settings; also the `finetune` block of recipes and passes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf and .nan are typos

    epochs: int = Field(20, ge=0)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["cosine", "step", "none"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(0, ge=0, description="early stop after this many epochs without val gain; 0 = off")
    seed: int = 0
    keep_best: bool = Field(True, description="restore the best-validation epoch; false keeps the last "
                            "(e.g. sparsity training, where later epochs are sparser)")
    threads: int | None = Field(None, ge=1, description="PyTorch intra-op threads while training; default: "
                                "1 for small models (see SMALL_BATCH_MACS), else PyTorch's own choice")


SMALL_BATCH_MACS = 1e9
"""Forward MACs per training batch below which one intra-op thread trains fastest. Edge models are small
(every zoo model at its reference input and batch 64 is under 7e8), and there PyTorch's default of one
thread per core spends its time in thread barriers, worst when other processes share the cores: 3 epochs
of ResNet-8 on 8x8 digits took 95 s with 2 threads vs 5 s with 1 on a loaded 2-core host, LeNet-5 12 s vs
3.3 s (docs/benchmarks.md, tool speed)."""


def train_threads(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    """Intra-op threads for training `model` on batches of `batch_size`: 1 when a batch's forward pass is
    under SMALL_BATCH_MACS (counted MACs, or parameters when no layer is counted), else PyTorch's default."""
    from edgeslim.models.counts import count_macs

    try:
        work = max(count_macs(model, input_shape), sum(p.numel() for p in model.parameters())) * batch_size
    except Exception:  # a model the probe cannot run alone (e.g. it needs several inputs): keep the default
        return torch.get_num_threads()
    return 1 if work < SMALL_BATCH_MACS else torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch intra-op threads set to `n` inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class Hooks:
    """Extension points. `loss` replaces the task loss; `extra_losses` are added to it (regularisers);
    `after_step` runs after every optimiser step (e.g. re-apply pruning masks); `after_epoch` gets
    the epoch index."""

    loss: LossFn | None = None
    extra_losses: list[LossFn] = field(default_factory=list)
    after_step: list[StepFn] = field(default_factory=list)
    after_epoch: list[Callable[[nn.Module, int], None]] = field(default_factory=list)


def is_reconstruction(model: nn.Module) -> bool:
    return getattr(model, "objective", "classification") == "reconstruction"


def task_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class labels; MSE on float targets (a task without labels, `data.unlabelled`: the
    original model's outputs are the targets); reconstruction models fit their input."""
    if is_reconstruction(model):
        return F.mse_loss(out, x)
    if y.is_floating_point():
        return F.mse_loss(out.reshape(y.shape), y)
    return F.cross_entropy(out, y)


EVAL_VALUES = 1 << 20  # input values per evaluation forward at most (peak memory follows the batch)


def eval_batch(x: np.ndarray, batch: int) -> int:
    """`batch`, lowered so one forward reads at most `EVAL_VALUES` input values: a 48x320 text line goes 22 at a
    time, a 320x320 page 3 (a transformer's activations are many times its input), digits still 512."""
    per = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    return max(1, min(batch, EVAL_VALUES // max(1, per)))


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """Outputs of `model` in eval mode on `x`, in batches. Threads as for training (`train_threads`); inside
    `train_model` they are already chosen, so the per-epoch validation does not count MACs again."""
    model.eval()
    dev = accelerator.device_of(model)  # a model inside a training on the accelerator is evaluated there
    batch = eval_batch(x, batch)
    threads = torch.get_num_threads()
    if threads > 1 and dev.type == "cpu":
        threads = train_threads(model, tuple(x.shape[1:]), min(batch, len(x)))
    with torch_threads(threads):
        outs = [model(torch.from_numpy(x[i : i + batch]).to(dev)).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    """Top-1 accuracy as a fraction 0-1 (for reconstruction models: minus the mean squared error; for float
    targets, a task without labels: the validation score against the teacher's outputs, `teacher_score`: the
    worst output's, score outputs also by top-1 agreement, state carried over the streams of `x`). `batch`:
    samples per forward pass (peak memory follows it)."""
    if not is_reconstruction(model) and np.issubdtype(np.asarray(y).dtype, np.floating):
        return teacher_score(model, x, y, batch).score
    return score_outputs(model, predict(model, x, batch), x, y)


def score_outputs(model: nn.Module, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """`evaluate`'s figure from `model`'s outputs `out` on `x`, already computed (one step: for a model with
    recurrent state, each row from the state it holds; `evaluate` runs the streams)."""
    if is_reconstruction(model):
        return -float(((out - x) ** 2).mean())
    if np.issubdtype(np.asarray(y).dtype, np.floating):  # teacher targets: the worst output's score, 0-1 (1: same)
        return score_rows(out, y, output_parts(model, x, out)).score
    return float((out.argmax(1) == y).mean())


def output_parts(model: nn.Module, x: np.ndarray, out: np.ndarray) -> list[OutputPart]:
    """The outputs of `model` as a row of the teacher's targets holds them (`onnxkit.scoring.OutputPart`): what
    `model.teacher_parts(x[:1])` says when the model has that method (a converted ONNX model: `run.onnx.TeacherView`
    and `run.onnx_layout.PackedView` know each output's shape, dtype and recurrent state), else one output shaped
    as `out` ([N, ...], a module's own output)."""
    fn = getattr(model, "teacher_parts", None)
    if callable(fn):
        with torch.no_grad():
            return list(fn(torch.from_numpy(np.ascontiguousarray(x[:1])).to(accelerator.device_of(model))))
    return [OutputPart("output", (1, *np.shape(out)[1:]), exact=not np.issubdtype(np.asarray(out).dtype, np.floating))]


@torch.no_grad()
def teacher_score(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 512) -> Score:
    """The validation score (0-1) of `model` against the teacher's outputs `y` ([N, D]) on `x`, with how it was
    reached (`onnxkit.scoring`, the rule the ONNX side's `onnxkit.session.onnx_score` follows): each output judged
    on its own, the worst counting; score outputs by the lower of cosine and top-1 agreement (per position for
    [N, T, C]); a model with recurrent state (`teacher_parts` name the state outputs) over the streams of `x`,
    its own state carried (`scoring.score_stream`), as the held-out stream fidelity judges it."""
    model.eval()
    dev = accelerator.device_of(model)
    batch = eval_batch(x, batch)
    threads = torch.get_num_threads()
    if threads > 1 and dev.type == "cpu" and len(x):
        threads = train_threads(model, tuple(x.shape[1:]), min(batch, len(x)))

    def step(rows: np.ndarray) -> np.ndarray:
        outs = [model(torch.from_numpy(np.ascontiguousarray(rows[i:i + batch])).to(dev)).cpu().numpy()
                for i in range(0, len(rows), batch)]
        return np.concatenate(outs).reshape(len(rows), -1)

    with torch_threads(threads):
        if not len(x):
            return Score(1.0)
        parts = output_parts(model, x, model(torch.from_numpy(np.ascontiguousarray(x[:1])).to(dev)).cpu().numpy())
        return score_stream(step, x, y, parts)


def teacher_cosine(out: np.ndarray, y: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of flattened outputs and targets (a 0 vector vs 0: 1)."""
    a = np.asarray(out, np.float64).reshape(len(out), -1)
    b = np.asarray(y, np.float64).reshape(len(y), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))
    return float(cos.mean())


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, cfg.lr, weight_decay=cfg.weight_decay)


def train_model(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    hooks: Hooks | None = None,
    desc: str = "train",
    quiet: bool = False,
    checkpoint: Path | None = None,
) -> dict:
    """Train in place; keeps the weights of the best validation epoch. Returns a small history.

    With `checkpoint`, the state after every epoch is saved there (tensors only, loaded with
    `weights_only=True`: no pickle code runs) and a killed run resumes from the last finished epoch.
    Runs with `cfg.threads` PyTorch threads (default `train_threads`), restored afterwards, on the job's
    accelerator (`edgeslim.accelerator.current()`: a CUDA GPU when PyTorch sees one, unless `cpu` was asked);
    the model is back on its own device (the CPU) when this returns.
    """
    threads = cfg.threads or train_threads(model, task.input_shape, cfg.batch_size)
    dev = accelerator.current()
    with torch_threads(threads), accelerator.on_device(model, dev):
        return _train(model, task, cfg, hooks, desc, quiet, checkpoint, dev)


def _train(model: nn.Module, task: Task, cfg: TrainConfig, hooks: Hooks | None, desc: str, quiet: bool,
           checkpoint: Path | None, dev: torch.device) -> dict:
    hooks = hooks or Hooks()
    if cfg.epochs == 0:
        return {"epochs": 0, "val_accuracy": evaluate(model, task.x_val, task.y_val)}
    resources.check_training(model, task.input_shape, cfg.batch_size, desc)  # refuse up front what cannot fit
    torch.manual_seed(cfg.seed)
    opt = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(task.x_train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, max(1, total // 3), 0.1)
    loss_fn = hooks.loss or task_loss
    xt, yt = torch.from_numpy(task.x_train).to(dev), torch.from_numpy(task.y_train).to(dev)
    best, best_state, stale, history = -math.inf, None, 0, []
    start = 0
    if checkpoint is not None and checkpoint.exists():
        try:
            ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception:  # truncated or corrupt (it is only a cache of our own): start over
            ck = {}
        if isinstance(ck, dict) and ck.get("config") == cfg.model_dump_json() and _fits(ck.get("model"), model):
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            if sched is not None:
                sched.load_state_dict(ck["sched"])
            best, best_state, stale, history = ck["best"], ck["best_state"], ck["stale"], ck["history"]
            start = len(history)
            if not quiet:
                print(f"[{desc}] resuming from epoch {start} ({checkpoint})", flush=True)
    progress = _Progress(desc, cfg.epochs, quiet)
    guard = DivergenceGuard(model, opt, sched, desc=desc, quiet=quiet)
    try:
        for epoch in range(start, cfg.epochs):
            with interrupt.during(f"{desc} epoch {epoch + 1}/{cfg.epochs}"):
                guard.save(epoch)
                while True:  # a non-finite loss rolls back to the epoch's start with a lower lr (edgeslim.guard)
                    try:
                        running = _train_epoch(model, opt, sched, hooks, loss_fn, xt, yt, cfg, epoch, steps_per_epoch)
                        break
                    except NonFiniteLoss as bad:
                        guard.rollback(bad)
                val = evaluate(model, task.x_val, task.y_val)
                history.append({"epoch": epoch + 1, "loss": running / steps_per_epoch, "val": val})
                progress.update(epoch + 1, running / steps_per_epoch, val)
                if val > best:
                    best, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, cfg, model, opt, sched, best, best_state, stale, history)
            if cfg.patience and stale >= cfg.patience:
                break
    except TrainingDiverged:
        if best_state is not None and cfg.keep_best:  # what a finished fit would keep: the best epoch
            model.load_state_dict(best_state)
        model.eval()
        raise
    finally:
        progress.close()
    if best_state is not None and cfg.keep_best:
        model.load_state_dict(best_state)
    model.eval()
    val_acc = best if cfg.keep_best or not history else history[-1]["val"]
    out = {"epochs": len(history), "val_accuracy": val_acc, "history": history}
    if guard.events:
        out["rollbacks"] = guard.events
    return out


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler | None,
                 hooks: Hooks, loss_fn: LossFn, xt: torch.Tensor, yt: torch.Tensor, cfg: TrainConfig, epoch: int,
                 steps_per_epoch: int) -> float:
    """One epoch of steps; returns the summed loss. Raises `NonFiniteLoss` before a bad step is taken."""
    model.train()
    rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch stream: resume and rollback replay the same order
    order = torch.from_numpy(rng.permutation(len(xt))).to(xt.device)
    running = 0.0
    for i in range(steps_per_epoch):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        if len(idx) < 2 and steps_per_epoch > 1:
            continue  # BatchNorm cannot train on a batch of one
        x, y = xt[idx], yt[idx]
        out = model(x)
        loss = loss_fn(model, x, y, out)
        for extra in hooks.extra_losses:
            loss = loss + extra(model, x, y, out)
        DivergenceGuard.check(loss, epoch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        for fn in hooks.after_step:
            fn(model)
        running += float(loss.detach())
    for fn_e in hooks.after_epoch:
        fn_e(model, epoch)
    return running


def _fits(state: object, model: nn.Module) -> bool:
    """Whether a checkpoint's weights have this model's names and shapes (another architecture trained
    into the same folder, e.g. a GRU student after an LSTM one, starts over instead of failing)."""
    own = model.state_dict()
    return isinstance(state, dict) and state.keys() == own.keys() and all(
        tuple(state[k].shape) == tuple(v.shape) for k, v in own.items())


def _save_checkpoint(path: Path, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LRScheduler | None, best: float, best_state: dict | None,
                     stale: int, history: list) -> None:
    import io

    from edgeslim.fsutil import write_bytes

    buf = io.BytesIO()
    torch.save({
        "config": cfg.model_dump_json(), "model": model.state_dict(), "opt": opt.state_dict(),
        "sched": sched.state_dict() if sched is not None else {}, "best": best, "best_state": best_state,
        "stale": stale, "history": history,
    }, buf)
    write_bytes(path, buf.getvalue())


class _Progress:
    """Rich progress bar on a terminal; one plain line per epoch otherwise (CI, logs)."""

    def __init__(self, desc: str, total: int, quiet: bool):
        self.desc, self.total, self.quiet = desc, total, quiet
        self.bar = None
        if not quiet and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True,
            )
            self.bar.start()
            self.tid = self.bar.add_task(desc, total=total, info="")

    def update(self, epoch: int, loss: float, val: float) -> None:
        info = f"loss {loss:.4f}  val {val:.4f}"
        if self.bar is not None:
            self.bar.update(self.tid, completed=epoch, info=info)
        elif not self.quiet:
            print(f"[{self.desc}] epoch {epoch}/{self.total}  {info}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
