"""The validation score of a run without labels: how close a model's outputs are to the original's (the teacher's).

One rule for both sides of a run, so a pick means the same whoever makes it: the PyTorch side (`train.evaluate`:
best epoch or step, pruning tries) and the ONNX side (`onnxkit.session.output_scores`: the INT8 pick). Targets are
the original's outputs flattened and concatenated per sample ([N, D]); an `OutputPart` per output says where its
values lie in the row and what it is. Each output gets a score 0-1 (1: the same), the worst output's is the score:

- a float output: the mean per-sample cosine; beside other outputs also the cosine over all its values (a one-value
  output's per-sample cosine is only its sign), the lower counting;
- score outputs (`classifier_like`, as `measure.fidelity` reports top-1 agreement for them: [N, C] scores, or
  per-position scores [N, T, C] of a CTC recogniser; never a recurrent state output): also the top-1 agreement,
  per position for [N, T, C] (the fraction of argmaxes equal), the lower counting. A mean cosine of 0.99 can hide 5% of positions read as
  another character (PP-OCRv4 rec: 95.3% held-out top-1 agreement at cosine 0.99);
- an integer or boolean output: the mean per-sample fraction of values exactly equal.

Recurrent state (`OutputPart.feeds`: the column of the input row where the next step reads the output): the rows
of a stream (`data.unlabelled.stream_task`) carry the teacher's state, row t + 1 holding the teacher's state output
of row t. `chains` finds those runs of rows from the data (a row continues the one before when its state columns
equal the teacher's state output of the row before, exactly as packed), and `stream_rows` runs a model over them
with its OWN state carried from each chain's first row (the state the inputs gave), which is how a streaming user
runs it and how the held-out `streams.stream_fidelity` judges it: a one-step score from the teacher's state hides
the drift of the state (a pruned VAD: 0.99 one step, 0.95 state cosine over the stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeslim.errors import EdgeslimError


def mean_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine of `a`'s row to `b`'s ([N, D] each; 1.0 for a row pair both all zeros, 0.0
    when only one is); 1.0 for no rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not len(a):
        return 1.0
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(all="ignore"):
        c = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))
    return float(np.where(np.isfinite(c), c, 0.0).mean())


def classifier_like(r: np.ndarray) -> bool:
    """Score outputs, judged on one reference feed `r` (batch axis included): [N, C] scores, or rank-3
    per-position class scores (CTC text recognisers): softmax rows, or a last axis of at least 1000 classes
    (character sets; an RNN state or a detector's box rows are shorter). `measure.fidelity` reports top-1
    agreement for these."""
    r = np.asarray(r)
    if r.dtype.kind != "f" or r.ndim not in (2, 3) or r.shape[-1] < 2 or r.size == 0:
        return False
    if r.ndim == 2 or r.shape[-1] >= 1000:
        return True
    return bool(r.min() >= 0 and np.allclose(r.sum(-1), 1.0, atol=1e-3))


def top1_same(got: np.ndarray, ref: np.ndarray, classes: int) -> np.ndarray:
    """Per position (every `classes` consecutive values): whether `got`'s argmax is `ref`'s; a position with a
    non-finite value in `got` disagrees. Flat bool array."""
    g, r = got.reshape(-1, classes), ref.reshape(-1, classes)
    return (g.argmax(-1) == r.argmax(-1)) & np.isfinite(g).all(-1)


@dataclass(frozen=True)
class OutputPart:
    """One output of a model as a row of the targets holds it."""

    name: str
    shape: tuple[int, ...]     # the output at batch 1 as the model gives it (its values in row order)
    exact: bool = False        # an integer or boolean output: judged by exact agreement
    feeds: int | None = None   # recurrent state: the input row's column where the next step reads this output

    @property
    def width(self) -> int:
        """Values per sample in the row."""
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class Score:
    """A model's validation score (0-1) and how it was reached."""

    score: float                                        # the worst output's
    by_output: dict[str, float] = field(default_factory=dict)
    bound: dict[str, str] = field(default_factory=dict)  # output -> the figure that set its score
    mode: str = "one step"                               # or "stream" (state carried, `stream_rows`)
    streams: int = 0                                     # chains run with the state carried (mode stream)
    smooth: float | None = None  # the worst output's cosine figures alone (no top-1 agreement): see `pick`
    cautious: float | None = None  # `score` with each top-1 agreement taken as its lower Wilson bound: see `judged`

    @property
    def judged(self) -> float:
        """The figure a fidelity budget is held by: `cautious` when there is one. A top-1 agreement on N rows is a
        proportion of N draws: 103 validation samples all agreeing leave a true rate as low as 99.0% plausible,
        one flip in 103 as low as 97.5% (lower Wilson bound, z = 1); the held-out rows will draw again. Outputs
        equal to the teacher's (cosine 1 within 1e-6: an unpruned copy) keep `score`: nothing to flip."""
        if self.cautious is None or (self.smooth is not None and self.smooth >= 1 - 1e-6):
            return self.score
        return self.cautious

    @property
    def pick(self) -> float:
        """The figure to choose among checkpoints of one training by: `smooth` when there is one. Top-1 agreement
        moves in steps of 1/N; the best of many checkpoints by it is the luckiest draw on the validation split
        (PP-OCR cls pruned: the best of 20 steps agreed on 204/205 validation samples, the same weights on 197/205
        held-out ones). The cosine moves with every sample's error, so a pick by it flatters the top-1 figure
        that `score` then reports far less."""
        return self.score if self.smooth is None else self.smooth

    @property
    def worst(self) -> str:
        return min(self.by_output.items(), key=lambda kv: kv[1])[0] if self.by_output else ""

    def describe(self) -> str:
        """e.g. "top-1 agreement of output 'logits' (stream over 2 chains)"."""
        if not self.by_output:
            return "no outputs"
        how = f"stream over {self.streams} chains, state carried" if self.mode == "stream" else "one step"
        return f"{self.bound[self.worst]} of output '{self.worst}' ({how})"

    def notes(self) -> dict:
        """What a pass records beside the score: `val_score_bound` says which figure bound it."""
        return {"val_score_bound": self.describe(), "val_score_mode": self.mode,
                "val_by_output": {k: round(v, 6) for k, v in self.by_output.items()},
                "val_bound_by_output": dict(self.bound)}


def wilson_low(p: float, n: int, z: float = 1.0) -> float:
    """Lower Wilson score bound of a proportion `p` observed on `n` trials (`z` = 1: about 84% one-sided)."""
    if n <= 0:
        return p
    c = z * z / n
    return float(max(0.0, (p + c / 2 - z * math.sqrt(p * (1 - p) / n + c / (4 * n))) / (1 + c)))


def output_score(got: np.ndarray, ref: np.ndarray, part: OutputPart,
                 several: bool) -> tuple[float, str, float, float]:
    """One output's score (module docstring) from its rows `got`, `ref` ([N, width]), the figure that set it, the
    lowest of its cosine figures alone (`Score.smooth`) and the score with top-1 agreement taken as its lower
    Wilson bound (`Score.cautious`)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if part.exact:
        v = float((got == ref).mean(1).mean()) if part.width and len(got) else 1.0
        return v, "exact agreement", v, v
    figs = [(mean_row_cosine(got, ref), "cosine")]
    if several:
        figs.append((mean_row_cosine(got.reshape(1, -1), ref.reshape(1, -1)), "cosine over all values"))
    cos = min(f for f, _ in figs)
    cautious = cos
    if part.feeds is None and len(ref) and classifier_like(ref[0].reshape(part.shape)):  # (a state is no scores)
        same = top1_same(got, ref, part.shape[-1])
        per_position = same.size > len(got)
        figs.append((float(same.mean()), "top-1 agreement" + (" per position" if per_position else "")))
        cautious = min(cos, wilson_low(float(same.mean()), int(same.size)))
    s, how = min(figs, key=lambda t: t[0])
    return s, how, cos, cautious


def score_rows(got: np.ndarray, ref: np.ndarray, parts: Sequence[OutputPart], mode: str = "one step",
               streams: int = 0) -> Score:
    """The score of a model's rows `got` against the teacher's `ref` ([N, D], `parts` in row order)."""
    got = np.asarray(got, np.float64).reshape(len(got), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    width = sum(p.width for p in parts)
    if ref.shape[1] != width or got.shape[1] != width:
        raise EdgeslimError(f"the model's outputs give {got.shape[1]} values per sample but the targets have "
                            f"{ref.shape[1]}: the targets were made by another model")
    by, bound, smooth, cautious, at = {}, {}, {}, {}, 0
    for p in parts:
        by[p.name], bound[p.name], smooth[p.name], cautious[p.name] = output_score(
            got[:, at:at + p.width], ref[:, at:at + p.width], p, len(parts) > 1)
        at += p.width
    return Score(min(by.values()) if by else 1.0, by, bound, mode, streams, min(smooth.values()) if smooth else None,
                 min(cautious.values()) if cautious else None)


def _links(parts: Sequence[OutputPart]) -> list[tuple[int, int, int]]:
    """(offset in the output row, width, column in the input row) of each state output."""
    out, at = [], 0
    for p in parts:
        if p.feeds is not None:
            out.append((at, p.width, p.feeds))
        at += p.width
    return out


def chains(x: np.ndarray, ref: np.ndarray, parts: Sequence[OutputPart]) -> list[tuple[int, int]]:
    """[start, end) of each run of rows of `x` linked by the teacher's state: row t continues row t - 1 when every
    state output of `ref` row t - 1 sits, exactly, in its columns of `x` row t (module docstring). Without state
    outputs every row is a chain of its own."""
    n = len(x)
    links = _links(parts)
    if not n:
        return []
    cont = np.zeros(n - 1, bool) if not links else np.ones(n - 1, bool)
    x2, r2 = np.asarray(x).reshape(n, -1), np.asarray(ref).reshape(n, -1)
    for o, w, c in links:
        cont &= np.all(x2[1:, c:c + w].astype(np.float32) == r2[:-1, o:o + w].astype(np.float32), axis=1)
    starts = [0, *(np.flatnonzero(~cont) + 1).tolist()]
    return list(zip(starts, [*starts[1:], n]))


def stream_rows(step: Callable[[np.ndarray], np.ndarray], x: np.ndarray, ref: np.ndarray,
                parts: Sequence[OutputPart]) -> tuple[np.ndarray, int]:
    """The rows [N, D] a model gives over the chains of `x` (`chains`) with its own state carried: each chain's
    first row as it is, every later row with its state columns replaced by the model's state output of the row
    before. The chains run side by side, `step(rows [B, width]) -> [B, D]` once per position. Returns the rows and
    the number of chains."""
    x = np.asarray(x)
    spans = chains(x, ref, parts)
    links = _links(parts)
    got = np.zeros(np.asarray(ref).reshape(len(x), -1).shape, np.float64)
    longest = max((e - s for s, e in spans), default=0)
    for j in range(longest):
        live = [s + j for s, e in spans if e - s > j]
        rows = x[live].copy()
        if j:
            for o, w, c in links:
                rows[:, c:c + w] = got[np.asarray(live) - 1, o:o + w]
        got[live] = np.asarray(step(rows), np.float64).reshape(len(live), -1)
    return got, len(spans)


def score_stream(step: Callable[[np.ndarray], np.ndarray], x: np.ndarray, ref: np.ndarray,
                 parts: Sequence[OutputPart]) -> Score:
    """The score of the model run by `step` on `x`: over streams when a part carries state and `x` holds chains
    of more than one row (`stream_rows`), else one step (`step` on every row at once)."""
    x, ref = np.asarray(x), np.asarray(ref)
    width = sum(p.width for p in parts)
    if ref.reshape(len(ref), -1).shape[1] != width:
        raise EdgeslimError(f"the model's outputs give {width} values per sample but the targets have "
                            f"{ref.reshape(len(ref), -1).shape[1]}: the targets were made by another model")
    if any(p.feeds is not None for p in parts):
        spans = chains(x, ref, parts)
        if any(e - s > 1 for s, e in spans):
            got, n = stream_rows(step, x, ref, parts)
            return score_rows(got, ref, parts, "stream", n)
    return score_rows(step(np.asarray(x)), ref, parts)


def state_columns(layout: dict) -> dict[str, int]:
    """{state output: the column of the packed row where the next step reads it} of a packed layout
    (`run.streams.Layout.as_dict()`, e.g. a run's `spec["layout"]`); {} without state."""
    out, at = {}, 0
    for s in layout.get("slots", []):
        if s["role"] == "const":
            continue
        if s["role"] == "state" and s.get("state_out"):
            out[s["state_out"]] = at
        at += int(np.prod(s["shape"])) if s["shape"] else 1
    return out


class Agreement:
    """Top-1 agreement of score outputs (`classifier_like`, judged on each reference feed) accumulated feed by
    feed, for scorers that stream a model's outputs (the INT8 plan's): per output index, the fraction of
    positions whose argmax is the reference's (a non-finite position disagrees)."""

    def __init__(self) -> None:
        self.hits: dict[int, list[float]] = {}

    def add(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """Count one feed's outputs `got` against `ref`; returns `got` (to sit inside a generator)."""
        for k, (r, g) in enumerate(zip(ref, got)):
            r = np.asarray(r)
            if not classifier_like(r):
                continue
            same = top1_same(np.asarray(g), r, r.shape[-1])
            h = self.hits.setdefault(k, [0.0, 0])
            h[0] += float(same.sum())
            h[1] += len(same)
        return got

    def value(self, k: int) -> float | None:
        """Output `k`'s agreement so far, or None when it is not a score output."""
        h = self.hits.get(k)
        return h[0] / h[1] if h and h[1] else None

    def bound(self, k: int, cosine: float) -> float:
        """The lower of output `k`'s cosine and its top-1 agreement (the cosine alone for other outputs)."""
        a = self.value(k)
        return cosine if a is None else min(cosine, a)
