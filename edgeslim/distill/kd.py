"""Knowledge-distillation building blocks: the losses, the teacher runner (with its output cache),
feature taps, adapters and exits, and transfer sets of unlabelled inputs.

- **Logit KD** (Hinton 2015): `alpha * T^2 * KL(p_teacher(T) || p_student(T)) + (1 - alpha) * CE(labels)`.
- **Feature KD** (FitNets): MSE between chosen intermediate outputs of student and teacher, through a
  learned 1x1 conv / linear adapter when widths differ (the teacher map is average-pooled to the
  student's spatial size when those differ). Adapters exist only during training.
- **Self-distillation** (Zhang 2019, "Be your own teacher"): auxiliary exits (pool + linear) on chosen
  student layers; the deepest output teaches every shallower exit. Exits are dropped after training.
- **Multi-teacher**: soft targets are the (weighted) average of the teachers' tempered probabilities.
- **Transfer set**: unlabelled inputs the teachers label once; each step adds a batch of them to the KD
  term. This is where KD pays off most: the student learns the teacher's function on inputs that have
  no labels, which training on labels alone cannot use.

The pass that uses these (`distill`, and KD during later fine-tuning) is `edgeslim.passes.distill`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.accelerator import device_of
from edgeslim.errors import EdgeslimError
from edgeslim.models.spec import get_module
from edgeslim.train import is_reconstruction

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
            if device_of(t) != x.device:  # the student's batch is on the training's accelerator
                t.to(x.device)
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
        for t in self.models:  # back to the CPU after a training on the accelerator: counts and exports run there
            t.cpu()




class TransferSet:
    """Unlabelled inputs the teachers label once, in inference mode (a fixed transfer set, Hinton et al.
    2015). Each training step draws `per_step` of them for the KD term, so the student matches the
    teachers on more of the input distribution than the labelled set covers."""

    def __init__(self, x: np.ndarray, teachers: Sequence[nn.Module], ratio: int, seed: int = 0,
                 batch: int = 1024):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.ratio = int(ratio)
        self.gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.outputs = [torch.cat([t.eval()(self.x[i : i + batch]) for i in range(0, len(self.x), batch)])
                            for t in teachers]

    def __len__(self) -> int:
        return len(self.x)

    def sample(self, n_labelled: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        idx = torch.randint(len(self.x), (self.ratio * n_labelled,), generator=self.gen)
        return self.x[idx], [o[idx] for o in self.outputs]


def mix_inputs(x: torch.Tensor, gen: torch.Generator, beta: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup of a batch with a shuffled copy of itself: (mixed inputs, the permutation, lambda)."""
    lam = float(torch.distributions.Beta(beta, beta).sample()) if beta > 0 else 0.5
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], perm, lam


def kd_loss_fn(teachers: Teachers, temperature: float, alpha: float, weights: Sequence[float] | None,
               feat: tuple[FeatureTap, list[str], nn.ModuleDict, float] | None = None,
               exits: tuple[FeatureTap, list[str], nn.ModuleDict, float] | None = None,
               mixup: float | None = None, seed: int = 0, transfer: TransferSet | None = None,
               ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trainer loss (`Hooks.loss`) combining the KD terms that are switched on.

    With `mixup` (a Beta parameter) the distillation terms are computed on mixup-interpolated inputs
    that the teacher labels on the fly ("function matching", Beyer et al. 2022); the label term stays on
    the clean batch. With `transfer`, the logit (or, for reconstruction, output) KD term also covers a
    batch of the transfer set's unlabelled inputs; feature and exit terms stay on the labelled batch."""
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
        total = out.new_zeros(())
        # the taps hold the latest student forward: read them before the transfer batch runs
        if feat is not None:
            tap, layers, adapters, w = feat
            s_feats = tap.get(layers)
            total = total + w * feature_kd_loss(s_feats, t_feats, [adapters[str(i)] for i in range(len(layers))])
        if exits is not None:
            tap, layers, heads, w = exits
            logits = [heads[str(i)](f) for i, f in enumerate(tap.get(layers))]
            total = total + w * self_distill_loss(logits, out, y, temperature, 0.5)
        if transfer is not None and model.training:
            xu, tu = transfer.sample(len(x))
            xu, tu = xu.to(x.device), [t.to(x.device) for t in tu]
            s_out = torch.cat([s_out, model(xu)])
            t_logits = [torch.cat([a, b]) for a, b in zip(t_logits, tu)]
        if is_reconstruction(model):  # regression: match the teachers' outputs
            t_mean = torch.stack(t_logits).mean(0)
            total = total + alpha * F.mse_loss(s_out, t_mean) + (1 - alpha) * F.mse_loss(out, x)
        elif alpha > 0:
            total = total + alpha * kd_loss(s_out, soft_targets(t_logits, temperature, weights), temperature)
            if alpha < 1:
                total = total + (1 - alpha) * F.cross_entropy(out, y)
        else:
            total = total + F.cross_entropy(out, y)
        return total

    return loss
