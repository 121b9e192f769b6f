"""The INT8 plan's fidelity judges: one step on the calibration feeds (`evaluator`), or, for a model with
recurrent state, over streams with the state carried (`stream_evaluator`).

The plan (`quant.int8_plan.build_plan`) judges every choice it makes (calibration method, equalisation,
AdaRound, bias correction, the per-layer sensitivity that ranks layers, the bisection "k layers float to reach
the target", the storage of the fidelity floats) with one `Evaluate` (model, feeds) -> worst-output fidelity.
One step at a time from the teacher's state, a quantized recurrent model looks faithful while its state drifts
over a stream: silero VAD's plan believed 1 float layer gave cosine 0.9978, and the candidate it built scored
0.977 on the state output over the validation streams and lost to FP32-compute w8 (issue 23, run s8vad15).

`StreamData` holds the rows the candidates are judged on (the validation split: packed rows that form streams,
and the teacher's outputs that link them); `stream_evaluator` runs the plan's float model over those streams
once, with its own state carried (`onnxkit.scoring.stream_rows`, the machinery `onnxkit.session.onnx_score`
uses for the candidates' judge), then each model the plan asks about the same way, and scores it against the
float model's rows with the candidates' own rule (`onnxkit.scoring.score_rows`: each output on its own, the
worst counting; a state output never judged as class scores).

Why the validation rows and not the calibration ones: calibration samples are a random subset of the training
rows (`Task.calibration`), so consecutive calibration rows are not consecutive steps of a stream and no state
can be carried over them; the validation split is whole blocks of the stream (`data.unlabelled.stream_task`),
and it is where every pick of a run is made (the held-out test split is read by nothing here). The plan's
picks are then made on the same rows, with the same rule, as the pick among its candidates that follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.lazy import stream_cosine, stream_output_cosines
from edgeslim.onnxkit.scoring import Agreement, OutputPart, chains, score_rows, stream_rows
from edgeslim.onnxkit.session import FLOAT_TYPES, output_rows, output_rows_shapes, session

Evaluate = Callable[[onnx.ModelProto, int], float]  # (model, number of feeds) -> worst-output fidelity (0-1)


def evaluator(feeds: Sequence[Feed], ref: Sequence[list[np.ndarray]], threads: int = 1,
              worst: dict | None = None) -> Evaluate:
    """(model, n) -> the fidelity of `model` vs `ref` over the first n feeds, accumulated feed by feed (memory
    is one feed's outputs whatever n is). One output: its cosine over every value (`onnxkit.lazy.stream_cosine`).
    Several outputs: the worst output's cosine, each output judged on its own (the lower of its mean per-sample
    cosine and its cosine over all values, `onnxkit.lazy.stream_output_cosines`, as `onnxkit.session.output_scores` judges the validation pick), so a small
    output (a recurrent state beside a big map) is never hidden by a big one. A score output (`onnxkit.scoring.
    classifier_like`) counts the lower of that and its top-1 agreement. `worst` (a dict) receives the
    last call's worst output: {"output": index, "cosine": value}."""
    def evaluate(model: onnx.ModelProto, n: int) -> float:
        s = session(model.SerializeToString(), threads=threads)
        names = [i.name for i in s.get_inputs()]
        k = min(n, len(feeds))
        agree = Agreement()  # score outputs: the lower of cosine and top-1 agreement, as the validation pick
        if len(s.get_outputs()) == 1:
            pairs = ((ref[i], agree.add(ref[i], s.run(None, {name: f[name] for name in names})))
                     for i, f in enumerate(feeds[:k]))
            return agree.bound(0, stream_cosine(pairs)[0])
        triples = ((ref[i], agree.add(ref[i], s.run(None, {name: f[name] for name in names})), _samples(f))
                   for i, f in enumerate(feeds[:k]))
        per = [agree.bound(j, c) for j, c in enumerate(stream_output_cosines(triples))]
        j = int(np.argmin(per))
        if worst is not None:
            worst.update(output=j, cosine=per[j])
        return per[j]
    return evaluate


def _samples(feed: Feed) -> int:
    """Samples in a feed: the leading size of its first input (1 for a scalar)."""
    x = np.asarray(next(iter(feed.values())))
    return int(x.shape[0]) if x.ndim else 1



@dataclass(frozen=True)
class StreamData:
    """Rows a model with recurrent state is judged on, as streams (validation split of a run)."""

    x: np.ndarray                 # packed input rows [N, width] float32, consecutive steps of each stream
    y: np.ndarray                 # the teacher's outputs per row [N, D] (flattened, concatenated): links the rows
    state_columns: dict[str, int]  # {state output: its column in the packed row} (`onnxkit.scoring.state_columns`)

    def parts(self, sess) -> list[OutputPart]:
        """The outputs of `sess` as a row holds them, each state output with the column it is fed back to."""
        _, shapes = output_rows_shapes(sess, np.asarray(self.x)[:1], 64)
        return [OutputPart(o.name, s, o.type not in FLOAT_TYPES, self.state_columns.get(o.name))
                for o, s in zip(sess.get_outputs(), shapes)]

    def has_streams(self, sess) -> bool:
        """Whether some rows continue the one before (a chain longer than one step): else nothing to carry."""
        if not len(self.x) or not self.state_columns:
            return False
        return any(e - s > 1 for s, e in chains(self.x, self.y, self.parts(sess)))


def stream_evaluator(reference: onnx.ModelProto, data: StreamData, threads: int = 1,
                     worst: dict | None = None) -> Evaluate:
    """(model, n) -> the worst-output fidelity (0-1) of `model` to `reference` over the streams of `data`, each
    model with its own state carried from each stream's first row (module docstring). `n` (feeds, the plan's
    probe size) is not used: a stream is always run whole, as the state's drift grows along it and a prefix
    would hide it; the cost is the validation split once per call. `worst` (a dict) receives the last call's
    worst output: {"output": index in the model's outputs, "cosine": value}, as `evaluator` does."""
    ref_sess = session(reference.SerializeToString(), threads=threads)
    parts = data.parts(ref_sess)
    names = [p.name for p in parts]
    ref_rows, _ = _run(ref_sess, data, parts)

    def evaluate(model: onnx.ModelProto, n: int) -> float:
        got, streams = _run(session(model.SerializeToString(), threads=threads), data, parts)
        sc = score_rows(got, ref_rows, parts, "stream", streams)
        if worst is not None and sc.by_output:
            worst.update(output=names.index(sc.worst), cosine=sc.score)
        return sc.score
    return evaluate


def _run(sess, data: StreamData, parts: list[OutputPart]) -> tuple[np.ndarray, int]:
    """The rows [N, D] `sess` gives over the streams of `data` with its own state carried, and the stream count."""
    def step(rows: np.ndarray) -> np.ndarray:
        return np.concatenate(output_rows(sess, rows, 64), 1)

    return stream_rows(step, np.asarray(data.x), np.asarray(data.y), parts)


def plan_evaluator(reference: onnx.ModelProto, data: StreamData | None, threads: int, worst: dict,
                   notes: list[str]) -> Evaluate | None:
    """The plan's judge over streams (`stream_evaluator`) when `data` is given and its rows form streams, with a
    note saying so; None otherwise (the plan keeps its one-step judge on the calibration feeds)."""
    if data is None:
        return None
    sess = session(reference.SerializeToString(), threads=threads)
    if not data.has_streams(sess):
        notes.append("fidelity judged one step: the validation rows form no streams to carry the state over")
        return None
    spans = chains(data.x, data.y, data.parts(sess))
    notes.append(f"fidelity judged over {len(spans)} validation streams ({len(data.x)} steps), each model with its "
                 "own state carried (as the candidates are judged), not one step on the calibration feeds")
    return stream_evaluator(reference, data, threads, worst)
