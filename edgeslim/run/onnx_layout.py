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
from edgeslim.onnxkit.inputs import Feed, InputSpec
from edgeslim.run.onnx import OnnxHandler, TeacherView
from edgeslim.run.streams import PACKED, Layout, PackedModule, call_packed, feeds_for, flat_torch, run_rows


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

    def feed_of(self, path: Path, rows: np.ndarray) -> Feed:
        return feeds_for(path, self.layout, rows)

    def export(self, model: Any, onnx_path: Path, task: Any) -> dict:
        from edgeslim.onnxtorch import export_converted, parity

        assert self.source is not None
        lay = self.layout
        if self.pending_baseline:  # the original file as given; the conversion checked on it
            self.pending_baseline = False
            shutil.copyfile(self.source, onnx_path)
            errs = parity(self.source, model.inner, lay.unpack(task.x_test[:1 if lay.per_sample else 4]))
            return {"conversion_parity_max_abs_diff": errs, "parity_split": "test"}
        res = export_converted(PackedModule(model.inner, lay), {PACKED: task.x_test[:1]}, onnx_path,
                               dynamic=not lay.per_sample)
        return {"parity_max_abs_diff": res["parity_max_abs_diff"], "parity_split": "test",
                "interface": f"one input '{PACKED}' [N, {lay.width}] float32: the packed per-sample inputs "
                             f"({', '.join(s.name for s in lay.packed)}); constants baked in "
                             f"({', '.join(s.name for s in lay.slots if s.role == 'const') or 'none'})"}

    def fidelity_fields(self, ref_path: Path, onnx_path: Path, task: Any) -> dict:
        from edgeslim.measure.fidelity import compare
        from edgeslim.run.streams import stream_fidelity

        lay = self.layout

        def one_step(x: np.ndarray, split: str) -> dict:
            f = compare(lay.outputs, run_rows(ref_path, lay, x, self.threads), run_rows(onnx_path, lay, x, self.threads))
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
    from edgeslim.onnxkit.inputs import load_npz
    from edgeslim.run.streams import probe, stream_runs, teacher_rows

    feeds = load_npz(inputs, specs)
    lay = probe(model, specs, feeds, threads)
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
