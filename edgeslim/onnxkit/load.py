"""Load an ONNX model: leniently (`read_onnx`, a file edgeslim made or a user passed for measuring) or
strictly with repairs (`load_onnx`, `load_and_repair`: third-party models to optimise).

Real exports are messy: weights stored as `Constant` nodes (Paddle, spox), opsets too old for per-channel
QDQ (opset 13 added the `axis` attribute), weights inside `If`/`Loop` bodies, shapes left symbolic. Each
repair here is small, checked, and recorded as a note so the command can say what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import numpy_helper

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.graph import graphs
from edgeslim.untrusted import check_onnx_file

MIN_OPSET = 11     # the floor: older exports are rare and the converter is unreliable on them
PER_CHANNEL_OPSET = 13  # QuantizeLinear/DequantizeLinear gained `axis` (per-channel) in opset 13


@dataclass
class Loaded:
    """A repaired model plus what was done to it (human-readable notes, in order)."""

    model: onnx.ModelProto
    opset: int            # default-domain opset after repair
    source_opset: int     # as the file declared it
    notes: list[str] = field(default_factory=list)


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def read_onnx(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself, or the model in the file; an unreadable file is one `EdgeslimError` line."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # DecodeError, OSError...
        raise EdgeslimError(f"{model}: not a readable ONNX model ({type(e).__name__})") from None


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Parse and check `path`; any problem is one `EdgeslimError` line naming the file."""
    p = Path(path)
    check_onnx_file(p)  # missing, empty, corrupt, external data outside the folder: one line
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeslimError(f"{p}: not a readable ONNX model (truncated, corrupt or another format: {msg})") from None
    if not model.HasField("graph") or (not model.opset_import and not model.graph.node):
        raise EdgeslimError(f"{p}: not an ONNX model (no graph or opset found in the file)")
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise EdgeslimError(
            f"{p}: unsupported opset {opset} (edgeslim optimize takes opsets {MIN_OPSET} to {newest}; "
            "upgrade older models with onnx.version_converter first)"
        )
    try:  # the checker takes a path for models over protobuf's 2 GB limit
        onnx.checker.check_model(str(p) if p.stat().st_size > 2**31 - 2**24 else model)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeslimError(f"{p}: invalid ONNX model ({msg})") from None
    return model


def constants_to_initializers(model: onnx.ModelProto, min_elements: int = 16) -> int:
    """Move tensor-valued `Constant` nodes (main graph and subgraphs) into main-graph initializers.

    Why: quantizers and weight compression only see initializers. Subgraph constants are lifted to the
    main graph (outer-scope values are visible inside If/Loop bodies), which is how weights inside
    control flow become reachable. Small constants (< `min_elements`, e.g. shape vectors) stay put: they
    are not weights and some exporters rely on them being nodes. Returns how many were moved.
    """
    main = model.graph
    moved = 0
    for g in reversed(list(graphs(main))):  # children first: rewriting a node list copies its nodes
        outputs = {o.name for o in g.output}
        keep = []
        for n in g.node:
            t = None
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in outputs:
                attr = {a.name: a for a in n.attribute}
                if "value" in attr and attr["value"].type == onnx.AttributeProto.TENSOR:
                    t = attr["value"].t
            if t is not None and numpy_helper.to_array(t).size >= min_elements:
                t2 = onnx.TensorProto()
                t2.CopyFrom(t)
                t2.name = n.output[0]
                main.initializer.append(t2)
                moved += 1
            else:
                keep.append(n)
        if len(keep) != len(g.node):
            del g.node[:]
            g.node.extend(keep)
    return moved


def upgrade_opset(model: onnx.ModelProto, target: int = PER_CHANNEL_OPSET) -> onnx.ModelProto | None:
    """`model` converted to `target` by onnx.version_converter and checked, or None if that fails."""
    from onnx import version_converter

    try:
        up = version_converter.convert_version(model, target)
        onnx.checker.check_model(up)
        return up
    except Exception:
        return None


def load_and_repair(path: str | Path, upgrade: bool = True) -> Loaded:
    """Load `path`, lift Constant weights and (if `upgrade`) move an opset under 13 up to 13."""
    model = load_onnx(path)
    src = default_opset(model)
    out = Loaded(model, src, src)
    n = constants_to_initializers(model)
    if n:
        out.notes.append(f"moved {n} Constant-node tensors into initializers (incl. If/Loop bodies)")
    if upgrade and src < PER_CHANNEL_OPSET:
        up = upgrade_opset(model)
        if up is not None:
            out.model, out.opset = up, PER_CHANNEL_OPSET
            out.notes.append(f"upgraded opset {src} -> {PER_CHANNEL_OPSET} for per-channel quantization")
        else:
            out.notes.append(f"opset {src} could not be upgraded: per-channel INT8 off (per-tensor used)")
    return out
