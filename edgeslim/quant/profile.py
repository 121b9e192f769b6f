"""Per-node kernel times from ONNX Runtime's profiler, mapped back to the nodes of the model we wrote.

Why: deciding layer by layer whether INT8 pays needs each layer's time in FP32 and in INT8, measured on
this CPU. The times themselves come from the measurement layer (`measure.latency.onnx_kernel_profile`,
reached through the plan's injected clock: ORT's per-kernel profile over the one timer's interleaved
rounds, median per kernel in microseconds); this module only maps ORT's names back to ours.

ORT renames what it fuses: a QDQ group becomes `<conv name>_token_<k>` (QLinearConv), an NCHWc conv is
named after its output tensor plus `_nchwc`, layout changes appear as `ReorderInput`/`ReorderOutput`/
`Transpose` nodes of its own. `attribute` maps names back to our node names where it can and reports the
rest as unattributed time (layout overhead), which the final whole-model comparison still sees.
"""

from __future__ import annotations

import re
from collections import defaultdict

import onnx

_TOKEN = re.compile(r"_token_\d+$")


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
