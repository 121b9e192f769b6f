"""Files from elsewhere: checked before anything trusts them.

- ONNX files (`check_onnx_file`): parsed without their external data first; a truncated or corrupt file
  is one line naming it, and a tensor whose external data lies outside the model's folder (an absolute
  path, `..`, a symbolic link) is refused before any byte of it is read. ONNX and ONNX Runtime refuse
  these too (onnx >= 1.16); checking here first gives one clear line on every command, whichever
  library would have met the file first.
- Pickles: `models.load_model` never unpickles a `.pt` without `trust_pickle`; the trainer's own
  checkpoints load with `weights_only=True`; NumPy files load with `allow_pickle=False`.
- Paths in a recipe (`resolve_recipe_paths`): a config field marked `json_schema_extra={"path": "input"}`
  names a file to read. A relative one is looked up beside the recipe first, then in the working
  directory, and must exist before the run writes anything. A field marked `{"path": "output"}` names a
  file a pass writes: it must be a plain relative name that stays inside the stage folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeslim.errors import EdgeslimError

if TYPE_CHECKING:  # pragma: no cover
    import onnx


def check_onnx_file(path: str | Path) -> onnx.ModelProto:
    """The model graph of `path` (external data not loaded), or one EdgeslimError line saying why not."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgeslimError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise EdgeslimError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgeslimError(f"{p}: not a readable ONNX model (truncated, corrupt or another format: {msg})") from None
    try:  # only inspection below: anything that breaks on this file means the file is broken
        if not model.HasField("graph") or not (model.graph.node or model.graph.output):
            raise EdgeslimError(f"{p}: not an ONNX model (no graph in the file)")
        check_external_data(model, p)
        # the structural checker: types, names, attributes, opsets. Given the path when the model has
        # external data (checked against the model's folder) or is over protobuf's 2 GB limit
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model))
        try:
            onnx.checker.check_model(str(p) if external or p.stat().st_size > 2**31 - 2**24 else model)
        except onnx.checker.ValidationError as e:
            # nodes out of order (ORT's quantizers leave a node after an If that reads it): ONNX Runtime runs
            # such files; check the sorted graph, and answer with it
            if "topologically sorted" not in str(e) or not sort_topologically(model.graph):
                raise
            onnx.checker.check_model(model)
        for t in _tensors(model):
            _check_tensor(t, p)
    except EdgeslimError:
        raise
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgeslimError(f"{p}: invalid ONNX model ({msg[:300]})") from None
    return model


def _check_tensor(t: onnx.TensorProto, path: Path) -> None:
    """A tensor's stored data must match its dims and type (a bit flip in a dim or a dtype breaks this)."""
    import numpy as np
    import onnx

    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in (onnx.TensorProto.STRING, 0):
        return
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        raise EdgeslimError(f"{path}: tensor '{t.name}' has an unknown element type {t.data_type}") from None
    n = 1
    for d in t.dims:
        if d < 0:
            raise EdgeslimError(f"{path}: tensor '{t.name}' has a negative dimension {list(t.dims)}")
        n *= d
    half = t.data_type in {getattr(onnx.TensorProto, k) for k in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, k)}
    if t.HasField("raw_data"):
        have, want = len(t.raw_data), (n + 1) // 2 if half else n * itemsize
    else:  # typed fields: one value per element (two for complex, half for 4-bit types)
        fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
        have = max(len(getattr(t, f)) for f in fields)
        complex_ = t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)
        want = (n + 1) // 2 if half else 2 * n if complex_ else n
    if have != want:
        raise EdgeslimError(f"{path}: tensor '{t.name}' holds {have} stored values/bytes but its shape "
                            f"{list(t.dims)} needs {want} (truncated or corrupt)")


@contextmanager
def about(path: str | Path, what: str = "cannot process the model") -> Iterator[None]:
    """Inside, errors that ONNX, ONNX Runtime or protobuf raise about a model become one EdgeslimError
    line naming `path`; an EdgeslimError that names no file gets `path` in front.
    Errors from edgeslim's own code pass through (a bug is reported as one)."""
    try:
        yield
    except EdgeslimError as e:
        msg = str(e)
        names_a_file = _is_path(msg.split(": ", 1)[0])  # e.g. the calibration file's own error
        if str(path) in msg or Path(path).name in msg or names_a_file:
            raise
        raise EdgeslimError(f"{path}: {msg}") from None
    except Exception as e:
        from_model = type(e).__module__.startswith(("onnx", "onnxruntime", "google.protobuf"))
        if not (from_model or isinstance(e, UnicodeError)):  # UnicodeError: a name in the file is not UTF-8
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgeslimError(f"{path}: {what} ({first[:300]})") from None


def _is_path(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a path
        return False


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    import onnx

    out: list[onnx.TensorProto] = []
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        out += list(g.initializer) + [s.values for s in g.sparse_initializer]
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    out.append(a.t)
                elif a.type == onnx.AttributeProto.TENSORS:
                    out += list(a.tensors)
                elif a.type == onnx.AttributeProto.GRAPH:
                    graphs.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    graphs += list(a.graphs)
    return out


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external-data location must be a regular file inside the model's folder."""
    import onnx

    folder = Path(path).resolve().parent
    for t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = folder / loc
        why = None
        if not loc:
            why = "names no file"
        elif os.path.isabs(loc) or Path(loc).drive:
            why = "is an absolute path"
        elif folder not in target.resolve().parents:
            why = "points outside the model's folder"
        elif any(q.is_symlink() for q in [target, *target.parents] if folder in q.parents):
            why = "goes through a symbolic link"
        elif not target.is_file():
            why = "is missing"
        if why:
            raise EdgeslimError(
                f"{path}: tensor '{t.name}' keeps its data in '{loc}', which {why}; refused (external data "
                "must be a file in the model's folder)"
            )


def _marked(cfg: Any) -> dict[str, str]:
    """{field: "input" | "output"} for the config fields marked as paths."""
    out = {}
    for name, f in type(cfg).model_fields.items():
        extra = f.json_schema_extra
        if isinstance(extra, dict) and extra.get("path") in ("input", "output"):
            out[name] = str(extra["path"])
    return out


def resolve_input(value: str, recipe_dir: Path | None, where: str) -> str:
    """An input path from a recipe, resolved (recipe folder, then working directory) and checked to exist.
    Values like `generate:N` (not paths) pass through."""
    if ":" in value and not Path(value).exists() and not Path(value).drive:
        return value  # a scheme such as generate:N, validated by its own field
    p = Path(value).expanduser()
    tries = [p] if p.is_absolute() else [d / p for d in (recipe_dir, Path.cwd()) if d is not None]
    for t in tries:
        if t.exists():
            return str(t.resolve())
    looked = " or ".join(str(t.parent.resolve()) for t in tries)
    raise EdgeslimError(f"{where}: '{value}' not found (looked in {looked})")


def check_output_name(value: str, where: str) -> str:
    """An output file named in a recipe: a relative name that stays inside the stage folder."""
    p = Path(value)
    if not value or p.is_absolute() or p.drive or ".." in p.parts or value.startswith("~"):
        raise EdgeslimError(f"{where}: output '{value}' must be a relative file name inside the run folder "
                            "(no absolute path, no '..')")
    return value


def resolve_recipe_paths(recipe: Any, recipe_dir: Path | None) -> Any:  # edgeslim.recipe.Recipe in, out
    """`recipe` with its marked input paths resolved and checked and its output names checked."""
    steps = []
    for s in recipe.steps:
        update: dict[str, Any] = {}
        for name, kind in _marked(s.config).items():
            value = getattr(s.config, name)
            if value is None:
                continue
            where = f"{recipe.source}:{s.line}: {s.name}.{name}"
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            done = [resolve_input(v, recipe_dir, where) if kind == "input" else check_output_name(v, where)
                    for v in values]
            update[name] = done if isinstance(value, (list, tuple)) else done[0]
        steps.append(dataclasses.replace(s, config=s.config.model_copy(update=update)) if update else s)
    return dataclasses.replace(recipe, steps=tuple(steps))


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    import onnx

    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (If/Loop/Scan bodies, at any depth) read from the scopes around it."""
    names: set[str] = set()
    for sg in _bodies(node):
        local = {i.name for i in sg.input} | {t.name for t in sg.initializer} | {o for n in sg.node for o in n.output}
        for n in sg.node:
            names.update(x for x in [*n.input, *outer_reads(n)] if x and x not in local)
        names.update(o.name for o in sg.output if o.name not in local)
    return names


def sort_topologically(g: onnx.GraphProto) -> bool:
    """Reorder, in place, the nodes of `g` and of its subgraphs so that every node comes after the nodes
    producing what it reads, including what its subgraphs read from outside (the ONNX checker demands it,
    ONNX Runtime does not, and quantizers that insert nodes beside an `If` can break it). Stable: a sorted
    graph keeps its order. Returns whether anything moved."""
    import heapq

    import onnx

    moved = False
    for n in g.node:
        for sg in _bodies(n):
            moved |= sort_topologically(sg)
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    deps = [{producer[x] for x in [*n.input, *outer_reads(n)] if x in producer and producer[x] != i}
            for i, n in enumerate(g.node)]
    users: list[list[int]] = [[] for _ in g.node]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    left = [len(d) for d in deps]
    ready = [i for i, k in enumerate(left) if k == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            left[u] -= 1
            if left[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(g.node) or order == sorted(order):  # a cycle (leave it to the checker) or sorted
        return moved
    nodes = [onnx.NodeProto() for _ in order]
    for dst, i in zip(nodes, order):
        dst.CopyFrom(g.node[i])
    del g.node[:]
    g.node.extend(nodes)
    return True
