"""Several inputs of any dtype and recurrent state under `run --inputs`: one packed row per sample, and streams.

A model with several inputs (an audio chunk, a recurrent state, an int64 sample rate) is seen by the passes as
one float input: each sample's per-sample inputs flattened and concatenated into one row (`Layout.pack`). An
input whose value is the same for every sample of the .npz (a sample rate, a scalar flag) is a constant of the
run (`role "const"`, kept in the spec, fed as given, never trained on); a non-float per-sample input (token ids)
rides in the row as float (exact below 2**24) and is cast back before the model sees it: it passes through.

Recurrent state: an input and an output of the same shape and dtype whose names say so (`state` -> `stateN`,
`h` -> `hn`, `c` -> `cn`; `state_pairs`) is a state pair. The consecutive samples of the .npz are then a stream:
the state fed at step t is the model's own output at step t-1 (from the .npz's state at the start of a block).
The teacher's rows carry the teacher's state, so training fits one step from the states the original really
reaches (targets: every output, the new state included); fidelity runs each model over the held-out blocks
with its own state carried (`stream_runs`), which is how a streaming user runs it.

Stage ONNX files of such a model take the packed row (`PACKED`, [N, width] float32, `spec["layout"]` says the
layout); the baseline stays the original file. `feeds_for` builds the feed of either interface.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.onnxkit.inputs import Feed, InputSpec
from edgeslim.onnxkit.scoring import OutputPart, state_columns

PACKED = "packed"  # the one input of a packed stage's ONNX file
_HINT = re.compile(r"(state|hidden|cache|memory|^h\d*$|^c\d*$|^hn$|^cn$|^h_|^c_|_h$|_c$|^hx$|^cx$)")


@dataclass
class Slot:
    """One model input: `shape` is one sample's (a batch axis of size 1 where the model has one)."""

    name: str
    dtype: str
    shape: list[int]
    role: str                    # "data" (per sample, in the row), "state" (in the row, carried), "const"
    batch_axis: int | None = None
    state_out: str | None = None  # role state: the output that carries it to the next step
    value: list | float | int | None = None  # role const: the value, fed as given

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class Layout:
    slots: list[Slot]
    outputs: list[str]
    out_axes: list[int | None] = field(default_factory=list)  # batch axis per output (per_sample: unused)
    per_sample: bool = False     # the graph runs one sample at a time (batch fixed, or no batch axis found)

    @property
    def packed(self) -> list[Slot]:
        return [s for s in self.slots if s.role != "const"]

    @property
    def width(self) -> int:
        return sum(s.size for s in self.packed)

    @property
    def states(self) -> dict[str, str]:
        return {s.name: s.state_out for s in self.slots if s.role == "state" and s.state_out}

    def state_columns(self) -> dict[str, int]:
        """{state output: the column of the packed row where the next step reads it} (`scoring.state_columns`)."""
        return state_columns(self.as_dict())

    def parts(self, outs: Sequence[Any]) -> list[OutputPart]:
        """The outputs of one run at batch 1 (arrays or tensors, in `outputs` order) as a target row holds them
        (`onnxkit.scoring.OutputPart`): shape, integer or float, and the column a state output is fed back to."""
        cols = self.state_columns()
        return [OutputPart(n, tuple(o.shape), exact=not _is_float(o), feeds=cols.get(n)) for n, o in zip(self.outputs, outs)]

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Layout:
        return Layout([Slot(**s) for s in d["slots"]], list(d["outputs"]), list(d.get("out_axes", [])),
                      bool(d.get("per_sample")))

    def pack(self, feed: Feed) -> np.ndarray:
        """One sample's feed (batch 1) -> its row [width] float32."""
        return np.concatenate([np.asarray(feed[s.name], np.float32).reshape(-1) for s in self.packed])

    def unpack(self, rows: np.ndarray) -> Feed:
        """Rows [N, width] -> the model's feed at batch N (one row and no batch axis: per_sample)."""
        feed: Feed = {}
        off = 0
        for s in self.slots:
            if s.role == "const":
                feed[s.name] = np.asarray(s.value, dtype=s.dtype)
                continue
            cols = rows[:, off:off + s.size]
            off += s.size
            if s.batch_axis is None:
                assert len(rows) == 1, "an input without a batch axis runs one sample at a time"
                a = cols.reshape(s.shape)
            else:
                rest = [d for k, d in enumerate(s.shape) if k != s.batch_axis]
                a = np.moveaxis(cols.reshape(len(rows), *rest), 0, s.batch_axis)
            feed[s.name] = np.ascontiguousarray(a).astype(s.dtype)
        return feed

    def flat(self, outs: list[np.ndarray], n: int) -> np.ndarray:
        """One run's outputs -> [n, D] float32 rows (samples on the batch axis of each output)."""
        if self.per_sample:
            return np.concatenate([np.asarray(o, np.float32).reshape(1, -1) for o in outs], 1)
        return np.concatenate([np.moveaxis(np.asarray(o, np.float32), ax or 0, 0).reshape(n, -1)
                               for o, ax in zip(outs, self.out_axes)], 1)


def _is_float(a: Any) -> bool:
    return bool(a.is_floating_point()) if isinstance(a, torch.Tensor) else np.asarray(a).dtype.kind == "f"


def state_pairs(specs: list[InputSpec], outputs: dict[str, np.ndarray], feed: Feed) -> dict[str, str]:
    """{input: output} of recurrent state: same shape and dtype at run time, and both names hint at a state;
    an output starting with the input's name (h -> hn) is preferred."""
    pairs: dict[str, str] = {}
    for s in specs:
        a = np.asarray(feed[s.name])
        if a.dtype.kind != "f" or not _HINT.search(s.name.lower()):
            continue
        cands = [o for o, v in outputs.items() if o not in pairs.values() and v.shape == a.shape
                 and v.dtype == a.dtype and _HINT.search(o.lower())]
        cands.sort(key=lambda o: not o.lower().startswith(s.name.lower()))
        if cands:
            pairs[s.name] = cands[0]
    return pairs


def probe_layout(path: Path, specs: list[InputSpec], feeds: Sequence[Feed], threads: int = 1) -> Layout:
    """The layout of the model at `path` from the user's feeds (`onnxkit.inputs.load_npz_feeds`, batch-1 samples): which
    inputs vary per sample, which are state (`state_pairs`), which are constants; each input's and output's
    batch axis, found by running the model at batch 1 and 2 (per_sample when that fails or is ambiguous)."""
    from edgeslim.onnxkit.session import session

    sess = session(path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    f0 = feeds[0]
    one = dict(zip(names, sess.run(None, f0)))
    pairs = state_pairs(specs, one, f0)
    slots = []
    for s in specs:
        a = np.asarray(f0[s.name])
        varies = len(feeds) > 1 and feeds[-1][s.name] is not f0[s.name]
        role = "state" if s.name in pairs else ("data" if varies else "const")
        axis = None
        if role != "const":
            dims = s.dims or (None,) * a.ndim
            axis = next((k for k, (d, g) in enumerate(zip(dims, a.shape)) if g == 1 and not isinstance(d, int)),
                        None)
            if axis is None:
                axis = next((k for k, g in enumerate(a.shape) if g == 1), None)
        slots.append(Slot(s.name, a.dtype.str, list(a.shape), role, axis, pairs.get(s.name),
                          a.tolist() if role == "const" else None))
    lay = Layout(slots, names, [None] * len(names), per_sample=True)
    if any(s.batch_axis is None for s in lay.packed):
        return lay
    try:  # batch 2: each output's batch axis is the one that doubles
        two = sess.run(None, {s.name: np.concatenate([f0[s.name]] * 2, s.batch_axis) if s.role != "const"
                              else f0[s.name] for s in slots})
    except Exception:  # noqa: BLE001 - a graph that takes one sample at a time
        return lay
    axes: list[int | None] = []
    for n, t in zip(names, two):
        o = one[n]
        grew = [k for k in range(o.ndim) if o.ndim == t.ndim and o.shape[k] == 1 and t.shape[k] == 2
                and all(o.shape[j] == t.shape[j] for j in range(o.ndim) if j != k)]
        if len(grew) != 1:
            return lay
        axes.append(grew[0])
    return Layout(slots, names, axes, per_sample=False)


def feeds_for(path: Path | Any, layout: Layout, rows: np.ndarray) -> Feed:
    """The feed of the ONNX model at `path` (a session or a file) for packed `rows`: the packed interface of a
    stage, or the original's named inputs."""
    from edgeslim.onnxkit.session import session

    sess = session(path) if isinstance(path, str | Path) else path
    ins = [i.name for i in sess.get_inputs()]
    if ins == [PACKED]:
        return {PACKED: rows.astype(np.float32)}
    feed = layout.unpack(rows)
    return {k: v for k, v in feed.items() if k in ins}


def row_step(sess: Any, layout: Layout) -> int:
    """Rows per run: 32, or 1 for a graph that takes one sample at a time (per_sample, or a first input whose
    batch is fixed at 1, as a packed stage of a model with state)."""
    shape = sess.get_inputs()[0].shape
    return 1 if layout.per_sample or (shape and shape[0] == 1) else 32


def run_rows(path: Path, layout: Layout, rows: np.ndarray, threads: int = 1) -> list[list[np.ndarray]]:
    """The outputs of the ONNX model at `path` on packed `rows`, per run (32 rows a run, or 1 per sample)."""
    from edgeslim.onnxkit.session import session

    sess = session(path, threads=threads)
    step = row_step(sess, layout)
    return [sess.run(None, feeds_for(sess, layout, rows[i:i + step])) for i in range(0, len(rows), step)]


def flat_rows(layout: Layout, runs: list[list[np.ndarray]], rows_per_run: list[int]) -> np.ndarray:
    return np.concatenate([layout.flat(r, n) for r, n in zip(runs, rows_per_run)])


def teacher_rows(path: Path, layout: Layout, rows: np.ndarray, threads: int = 1) -> np.ndarray:
    """The model's flattened outputs [N, D] on packed rows (the targets of a run without labels)."""
    from edgeslim.onnxkit.session import session

    runs = run_rows(path, layout, rows, threads)
    step = row_step(session(path, threads=threads), layout)
    return flat_rows(layout, runs, [len(rows[i:i + step]) for i in range(0, len(rows), step)])


def stream_runs(path: Path, layout: Layout, feeds: Sequence[Feed], threads: int = 1
                ) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Run the model at `path` over `feeds` as one stream: the state fed at each step is the model's own state
    output of the step before (the first step's comes from its feed). Returns the packed rows it was fed
    [T, width] (states as carried) and its outputs per step."""
    from edgeslim.onnxkit.session import session

    sess = session(path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    carried: dict[str, np.ndarray] = {}
    rows, outs = [], []
    for f in feeds:
        row = layout.pack({**f, **carried})
        got = sess.run(None, feeds_for(sess, layout, row[None]))
        by = dict(zip(names, got))
        carried = {i: np.asarray(by[o]) for i, o in layout.states.items()}
        rows.append(row)
        outs.append(got)
    return np.stack(rows), outs


def decisions_changed(ref: list[np.ndarray], got: list[np.ndarray], threshold: float = 0.5) -> float:
    """Fraction (0-1) of steps whose single score falls on the other side of `threshold` (score > threshold is
    a positive decision, e.g. speech)."""
    a = np.array([float(np.asarray(r).reshape(-1)[0]) for r in ref]) > threshold
    b = np.array([float(np.asarray(g).reshape(-1)[0]) for g in got]) > threshold
    return float((a != b).mean()) if a.size else 0.0


def stream_fidelity(ref_path: Path, path: Path, layout: Layout, blocks: list[list[Feed]], split: str,
                    threads: int = 1) -> dict:
    """Fidelity of `path` to `ref_path` over the streams `blocks` (each from its first feed's state, each model
    carrying its own state): per-output cosine / max and mean abs error over every step (`measure.fidelity`),
    and for each single-score output the fraction of decisions (score > 0.5) that changed."""
    from edgeslim.measure.fidelity import DECISION_THRESHOLD, compare_outputs

    ref: list[list[np.ndarray]] = []
    got: list[list[np.ndarray]] = []
    for b in blocks:
        ref += stream_runs(ref_path, layout, b, threads)[1]
        got += stream_runs(path, layout, b, threads)[1]
    f = compare_outputs(layout.outputs, ref, got).as_dict()
    changed = {n: decisions_changed([r[k] for r in ref], [g[k] for g in got], DECISION_THRESHOLD)
               for k, n in enumerate(layout.outputs) if all(np.asarray(r[k]).size == 1 for r in ref)}
    for n, c in changed.items():
        f["per_output"][n]["decisions_changed"] = c
    return {"split": split, "mode": "stream", "state": layout.states, "streams": len(blocks), "samples": len(ref),
            **f, "samples_compared": len(ref), "decisions_changed": max(changed.values()) if changed else None,
            "decision_threshold": DECISION_THRESHOLD if changed else None}


class PackedModule(torch.nn.Module):
    """A converted model behind the packed interface: forward(rows [N, width]) -> the graph's outputs (a tuple);
    constants are fed as the layout gives them; non-float inputs are cast back from the row."""

    def __init__(self, inner: torch.nn.Module, layout: Layout):
        super().__init__()
        self.inner = inner
        self.layout = layout
        self.input_names = [PACKED]
        self.output_names = list(layout.outputs)
        self.dynamic_axes: dict[str, dict[int, str]] = {} if layout.per_sample else {
            PACKED: {0: "n"}, **{o: {ax or 0: "n"} for o, ax in zip(layout.outputs, layout.out_axes)}}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return call_packed(self.inner, self.layout, x)


def call_packed(inner: torch.nn.Module, layout: Layout, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`inner` (a converted module taking the model's inputs in order) on packed rows `x` [N, width]."""
    args, off = [], 0
    for s in layout.slots:
        dt = getattr(torch, np.dtype(s.dtype).name)
        if s.role == "const":
            args.append(torch.as_tensor(np.asarray(s.value, dtype=s.dtype)))
            continue
        cols = x[:, off:off + s.size]
        off += s.size
        if s.batch_axis is None:
            a = cols.reshape(s.shape)
        else:
            rest = [d for k, d in enumerate(s.shape) if k != s.batch_axis]
            a = cols.reshape(x.shape[0], *rest).movedim(0, s.batch_axis)
        args.append(a.round().to(dt) if np.dtype(s.dtype).kind in "biu" else a.to(dt))
    return tuple(inner(*args))


def flat_torch(layout: Layout, outs: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
    """`Layout.flat` in torch: one run's outputs -> [n, D] float rows."""
    if layout.per_sample:
        return torch.cat([o.reshape(1, -1).float() for o in outs], 1)
    return torch.cat([o.movedim(ax or 0, 0).reshape(n, -1).float() for o, ax in zip(outs, layout.out_axes)], 1)
