"""`run --inputs` on an ONNX model with several inputs (any dtype) or recurrent state (`run.streams`).

The passes see one float input (the packed row) and one flat output, as for a one-input model; the stages'
ONNX files take the packed row (`streams.PACKED`) and give the original outputs; the baseline is the original
file. A model with state is judged over streams: `fidelity` (held-out) and `fidelity_val` are
`streams.stream_fidelity` over the held-out / validation blocks (each model carrying its own state), with the
fraction of changed decisions for a single-score output; `fidelity_one_step` is the one-step fidelity on the
held-out rows (states as the original carried them).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.graph import rename_node_reads
from edgeslim.onnxkit.inputs import Feed, InputSpec
from edgeslim.run.onnx import OnnxHandler, TeacherView
from edgeslim.run.streams import PACKED, Layout, PackedModule, call_packed, feeds_for, flat_torch, run_rows

PACKED_ONNX = "packed.onnx"  # the baseline folder: the original behind the packed interface (ONNX passes read it)


class PackedView(TeacherView):
    """A converted ONNX model of several inputs as packed rows [N, width] -> one [N, D] output."""

    def __init__(self, inner: torch.nn.Module, layout: Layout):
        super().__init__(inner, layout.per_sample)
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout.per_sample:
            return torch.cat([flat_torch(self.layout, call_packed(self.inner, self.layout, x[i:i + 1]), 1)
                              for i in range(x.shape[0])])
        return flat_torch(self.layout, call_packed(self.inner, self.layout, x), x.shape[0])

    def teacher_parts(self, x1: torch.Tensor) -> list:
        """The outputs as a target row holds them, state outputs with their packed columns (`train.output_parts`:
        the validation score runs the streams with the state carried)."""
        return self.layout.parts(call_packed(self.inner, self.layout, x1[:1]))


def convert_packed(source: Path, layout: Layout) -> PackedView:
    from edgeslim.onnxtorch import onnx_to_torch

    conv, _ = onnx_to_torch(source)
    return PackedView(conv, layout).eval()


class LayoutOnnxHandler(OnnxHandler):
    """The ONNX handler for several inputs / recurrent state: packed stages, stream fidelity (module docstring).
    `blocks`: the raw feeds of each split's streams (state models only)."""

    def __init__(self, spec: dict, threads: int = 1, blocks: dict[str, list[list[Feed]]] | None = None):
        super().__init__(spec, threads)
        self.layout = Layout.from_dict(spec["layout"])
        self.blocks = blocks

    def _reopen(self, folder: Path) -> tuple[Any, dict]:
        import json

        from safetensors.torch import load_file

        from edgeslim import models
        from edgeslim.models.spec import resize_to_state_dict

        spec = json.loads((folder / models.io.SPEC).read_text())
        net = convert_packed(Path(spec["source"]), Layout.from_dict(spec["layout"]))
        state = load_file(str(folder / models.io.WEIGHTS))
        resize_to_state_dict(net, state)
        net.load_state_dict(state, strict=True)
        return net.eval(), spec

    def write_splits(self, out: Path, task: Any) -> None:
        """The held-out rows twice: `splits/test.npz` named as the original's inputs (what `measure --inputs`
        takes; constants as one value), `splits/test_packed.npz` for the packed stages."""
        self._out = out
        self._test_npz = out / "splits" / "test.npz"
        self._packed_npz = out / "splits" / "test_packed.npz"
        feeds = [self.layout.unpack(task.x_test[i:i + 1]) for i in range(len(task.x_test))]
        named = {s.name: (np.asarray(s.value, s.dtype) if s.role == "const" else np.stack([f[s.name] for f in feeds]))
                 for s in self.layout.slots}
        for path, arrays in ((self._test_npz, named), (self._packed_npz, {PACKED: task.x_test})):
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            write_bytes(path, buf.getvalue())

    def inputs_npz(self, onnx_path: Path) -> Path:
        from edgeslim.onnxkit.session import session

        return self._packed_npz if [i.name for i in session(onnx_path).get_inputs()] == [PACKED] else self._test_npz

    def pass_onnx(self, folder: Path) -> Path:
        """The baseline's packed export (`PACKED_ONNX`) for the ONNX passes; a later stage's model.onnx."""
        p = folder / PACKED_ONNX
        return p if p.is_file() else folder / "model.onnx"

    def feed_of(self, path: Path, rows: np.ndarray) -> Feed:
        return feeds_for(path, self.layout, rows)

    def export(self, model: Any, onnx_path: Path, task: Any) -> dict:
        from edgeslim.onnxtorch import conversion_parity

        assert self.source is not None
        lay = self.layout
        if self.pending_baseline:  # the original file as given; the conversion checked on it
            self.pending_baseline = False
            shutil.copyfile(self.source, onnx_path)
            errs = conversion_parity(self.source, model.inner, lay.unpack(task.x_test[:1 if lay.per_sample else 4]))
            # the ONNX passes (INT8) read the packed interface: the converted original, exported and checked
            res = self._export_packed(model, onnx_path.parent / PACKED_ONNX, task)
            return {"conversion_parity_max_abs_diff": errs, "parity_split": "test",
                    "packed_parity_max_abs_diff": res["parity_max_abs_diff"]}
        res = self._export_packed(model, onnx_path, task)
        return {"parity_max_abs_diff": res["parity_max_abs_diff"], "parity_split": "test",
                **{k: res.get(k, 0) for k in ("aligned_convs", "static_shapes_folded", "views_collapsed",
                                           "ops_rewritten")},
                "interface": f"one input '{PACKED}' [N, {lay.width}] float32: the packed per-sample inputs "
                             f"({', '.join(s.name for s in lay.packed)}); constants baked in "
                             f"({', '.join(s.name for s in lay.slots if s.role == 'const') or 'none'})"}

    def _export_packed(self, model: Any, path: Path, task: Any) -> dict:
        """The packed interface exported and checked (`export_converted`); with a dynamic batch, the exporter's
        shape-check If nodes (a squeeze of a dim it cannot see) that take one branch at batch 1 and at batch 2
        are replaced by that branch (`fold_probed_ifs`): the INT8 tooling cannot quantize around them."""
        from edgeslim.onnxtorch import export_converted

        res = export_converted(PackedModule(model.inner, self.layout), {PACKED: task.x_test[:1]}, path,
                               dynamic=not self.fixed_batch)
        if not self.fixed_batch:
            fold_probed_ifs(path, [task.x_test[:1], task.x_test[np.arange(2) % len(task.x_test)]])
        return res

    def fidelity_fields(self, ref_path: Path, onnx_path: Path, task: Any) -> dict:
        from edgeslim.measure.fidelity import compare_outputs
        from edgeslim.run.streams import stream_fidelity

        lay = self.layout

        def one_step(x: np.ndarray, split: str) -> dict:
            f = compare_outputs(lay.outputs, run_rows(ref_path, lay, x, self.threads), run_rows(onnx_path, lay, x, self.threads))
            return {"split": split, "samples": len(x), **f.as_dict(), "samples_compared": len(x)}

        if not lay.states or self.blocks is None:
            return {"fidelity": one_step(task.x_test, "test"), "fidelity_val": one_step(task.x_val, "val")}
        return {"fidelity": stream_fidelity(ref_path, onnx_path, lay, self.blocks["test"], "test", self.threads),
                "fidelity_val": stream_fidelity(ref_path, onnx_path, lay, self.blocks["val"], "val", self.threads),
                "fidelity_one_step": {**one_step(task.x_test, "test"),
                                      "mode": "one step from the state the original carried"}}


def layout_task(model: Path, inputs: Path, specs: list[InputSpec], seed: int, threads: int
                ) -> tuple[Any, Layout, dict[str, list[list[Feed]]] | None]:
    """The task of a several-input model without labels: packed rows, the original's outputs as targets; with
    recurrent state, streams (`data.unlabelled.stream_task`). Returns (task, layout, blocks of raw feeds)."""
    from edgeslim.data.unlabelled import stream_task, teacher_task
    from edgeslim.onnxkit.inputs import load_npz_feeds
    from edgeslim.run.streams import probe_layout, stream_runs, teacher_rows

    feeds = load_npz_feeds(inputs, specs)
    lay = probe_layout(model, specs, feeds, threads)
    noise = np.concatenate([np.full(s.size, s.role == "data" and np.dtype(s.dtype).kind == "f") for s in lay.packed])

    def teacher(rows: np.ndarray) -> np.ndarray:
        return teacher_rows(model, lay, rows, threads) if len(rows) else np.zeros((0, 0), np.float32)

    if not lay.states:
        rows = np.stack([lay.pack(f) for f in feeds])
        return teacher_task(str(inputs), rows, teacher, seed, noise_cols=noise), lay, None

    def stream(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, outs = stream_runs(model, lay, [feeds[i] for i in idx], threads)
        return rows, np.concatenate([lay.flat(o, 1) for o in outs])

    task, bl = stream_task(str(inputs), len(feeds), stream, teacher, seed, noise_cols=noise)
    task.meta["state"] = lay.states
    return task, lay, {k: [[feeds[i] for i in b] for b in v] for k, v in bl.items()}


def fold_probed_ifs(path: Path, probes: list[np.ndarray]) -> int:
    """Replace each top-level If of the packed model at `path` whose condition is the same on every probe (packed
    rows at batch 1 and 2) by its branch; the result must give the same outputs on the probes, else the file is
    left as it was. Returns how many were folded."""
    import onnx
    from onnx import helper

    from edgeslim.onnxkit.session import session

    m = onnx.load(str(path))
    ifs = [n for n in m.graph.node if n.op_type == "If"]
    if not ifs:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend([helper.make_empty_tensor_value_info(n.input[0]) for n in ifs if n.input[0] not in have])
    data = probe.SerializeToString()
    ref = [session(str(path)).run(None, {PACKED: x}) for x in probes]
    conds = [dict(zip([o.name for o in session(data).get_outputs()], session(data).run(None, {PACKED: x})))
             for x in probes]
    nodes, folded = [], 0
    for n in m.graph.node:
        vals = {bool(np.asarray(c[n.input[0]]).reshape(-1)[0]) for c in conds} if n.op_type == "If" else set()
        if len(vals) != 1:
            nodes.append(n)
            continue
        branch = next(a.g for a in n.attribute if a.name == ("then_branch" if vals.pop() else "else_branch"))
        tag = f"{n.name or n.output[0]}_fold{folded}"
        rename = {t.name: f"{tag}/{t.name}" for t in branch.initializer}
        rename.update({o: f"{tag}/{o}" for b in branch.node for o in b.output})
        for t in branch.initializer:
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            t2.name = rename[t.name]
            m.graph.initializer.append(t2)
        for b in branch.node:
            b2 = onnx.NodeProto()
            b2.CopyFrom(b)
            rename_node_reads(b2, rename)  # its own If/Loop bodies read the branch's tensors by name too
            b2.output[:] = [rename[o] for o in b.output]
            nodes.append(b2)
        nodes += [helper.make_node("Identity", [rename.get(bo.name, bo.name)], [o], name=f"{tag}/out{k}")
                  for k, (bo, o) in enumerate(zip(branch.output, n.output))]
        folded += 1
    if not folded:
        return 0
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    data = m.SerializeToString()
    try:
        got = [session(data).run(None, {PACKED: x}) for x in probes]
    except Exception:  # noqa: BLE001 - a graph the fold broke: keep the exported one
        return 0
    if any(not np.allclose(a, b, atol=1e-5) for r, g in zip(ref, got) for a, b in zip(r, g)):
        return 0
    write_bytes(path, data)
    return folded
