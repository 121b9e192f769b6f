"""Per-node kernel times from ONNX Runtime's profiler, mapped back to the nodes of the model we wrote.

Why: deciding layer by layer whether INT8 pays needs each layer's time in FP32 and in INT8, measured on
this CPU. Timing a whole model per layer would take minutes; ORT's profiler reports every kernel call
of one run. Sessions of the models being compared run in alternation (the same interleaving idea as
`measure.latency`), and each kernel's time is the median over the runs, in microseconds.

ORT renames what it fuses: a QDQ group becomes `<conv name>_token_<k>` (QLinearConv), an NCHWc conv is
named after its output tensor plus `_nchwc`, layout changes appear as `ReorderInput`/`ReorderOutput`/
`Transpose` nodes of its own. `attribute` maps names back to our node names where it can and reports the
rest as unattributed time (layout overhead), which the final whole-model comparison still sees.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.session import session_options

_TOKEN = re.compile(r"_token_\d+$")


def profile_nodes(models: dict[str, bytes], feed: Feed, runs: int = 15, threads: int = 1,
                  warmup: int = 3) -> dict[str, dict[str, float]]:
    """{model key: {ORT node name: median kernel time in us}} over `runs` alternating runs of each."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as td:
        sess: dict[str, ort.InferenceSession] = {}
        for k, data in models.items():
            opts = session_options(threads)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(td) / f"p{len(sess)}")
            sess[k] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feeds = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sess.items()}
        for _ in range(warmup):
            for k, s in sess.items():
                s.run(None, feeds[k])
        for r in range(runs):
            keys = list(sess)
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:
                sess[k].run(None, feeds[k])
        out = {}
        for k, s in sess.items():
            events = json.loads(Path(s.end_profiling()).read_text())
            per: dict[str, list[float]] = defaultdict(list)
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    per[e["name"][: -len("_kernel_time")]].append(float(e["dur"]))
            out[k] = {n: float(np.median(v[warmup:] or v)) for n, v in per.items()}  # warm-up runs are profiled too
        return out


def attribute(times: dict[str, float], model: onnx.ModelProto) -> tuple[dict[str, float], float]:
    """({our node name: us}, unattributed us) for the profile `times` of a session of `model`."""
    names = {n.name for n in model.graph.node}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    per: dict[str, float] = defaultdict(float)
    other = 0.0
    for raw, t in times.items():
        node = None
        if raw in names:
            node = raw
        elif _TOKEN.sub("", raw) in names:
            node = _TOKEN.sub("", raw)
        elif raw.endswith("_nchwc") and raw[: -len("_nchwc")] in producer:
            node = producer[raw[: -len("_nchwc")]]
        if node is None:
            other += t
        else:
            per[node] += t
    return dict(per), other
