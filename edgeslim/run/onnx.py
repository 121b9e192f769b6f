"""The ONNX-file handler of the one stage loop: an ONNX model in, trainable through `edgeslim.onnxtorch`, ONNX out.

The file is converted to a `ConvertedModule` (real Conv/Linear/BN layers: Torch-Pruning prunes it, training
updates it) and seen by the passes as one input -> one flat output (`TeacherView`: the graph's outputs
flattened and concatenated), which is what a task without labels (`data.unlabelled`) targets: the original's
outputs. Stages:
```
RUN/splits/test.npz          the held-out inputs (named as the model's input): every stage's fidelity is on them
RUN/stages/00_baseline/      model.onnx (the original file as given), model.safetensors + spec.json, metrics.json
RUN/stages/NN_<pass>/        model.safetensors + spec.json (reopened by converting the source again and loading
                             the weights: no pickle), model.onnx (exported back, parity-checked per output)
```
Every stage records `fidelity` (cosine, max/mean abs error per output, top-1 agreement for score outputs) on the
held-out split and `fidelity_val` on the validation split, each saying its split; latency comes from the final
interleaved timing of all stages (ONNX Runtime, batch 1, the run's threads).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.measure.core import Measurer
from edgeslim.recipe import Recipe
from edgeslim.run.handlers import ModelHandler
from edgeslim.run.pytorch import FlatOutputs


class TeacherView(FlatOutputs):
    """A converted ONNX model as one input -> one [N, D] output (its outputs flattened and concatenated, as
    `run.pytorch.FlatOutputs` does for a PyTorch model with several outputs).

    `per_sample`: the graph's batch is fixed at 1 (its outputs need not put samples on axis 0, e.g. a CRNN's
    [T, 1, C]): each sample runs alone and all its outputs flatten into its row."""

    def __init__(self, inner: nn.Module, per_sample: bool = False):
        super().__init__(inner, list(getattr(inner, "output_names", [])), ())
        self.per_sample = per_sample

    def prune_ignored(self) -> list[nn.Module]:
        """Layers channel pruning keeps whole (`prune.structured.model_ignored`): `onnxtorch.keep_whole` (the
        converted graph's Linear and recurrent layers, its output layers, and layers whose channels meet a
        constant Slice/Split/Reshape or per-channel constant the dependency graph cannot follow)."""
        from edgeslim.onnxtorch import keep_whole

        return keep_whole(self.inner)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_sample:
            return torch.cat([torch.cat([o.reshape(1, -1).float() for o in self.inner(x[i:i + 1])], 1)
                              for i in range(x.shape[0])])
        return super().forward(x)


def convert(source: Path, sample_shape: tuple[int, ...], per_sample: bool = False) -> TeacherView:
    """The ONNX file as a trainable module (one line naming the op and node when an op cannot be converted);
    `per_sample`: the model's batch is fixed at 1 (see `TeacherView`)."""
    from edgeslim.onnxtorch import onnx_to_torch

    conv, _ = onnx_to_torch(source)
    if len(conv.input_names) != 1:
        raise EdgeslimError(f"{source}: the model has {len(conv.input_names)} inputs "
                            f"({', '.join(conv.input_names)}); run --inputs takes one-input models for now "
                            "(use `edgeslim optimize` for this one)")
    return TeacherView(conv, per_sample).eval()


def onnx_outputs(path: Path, name: str, x: np.ndarray, fixed_batch: bool, threads: int = 1) -> list[list[np.ndarray]]:
    """Outputs of the ONNX model at `path` per batch of `x` (one sample per run when the batch is fixed)."""
    from edgeslim.onnxkit.session import session

    sess = session(path, threads=threads)
    step = 1 if fixed_batch else 32
    return [sess.run(None, {name: x[i:i + step]}) for i in range(0, len(x), step)]


def flat_outputs(runs: list[list[np.ndarray]], per_run: bool = False) -> np.ndarray:
    """Per-sample concatenation of every output, flattened: [N, D] (the `TeacherView` layout); `per_run`: each run
    is one sample (a batch fixed at 1), all its outputs flatten into one row whatever axis the batch is on."""
    return np.concatenate([np.concatenate([np.asarray(o, np.float32).reshape(1 if per_run else len(r[0]), -1)
                                           for o in r], 1) for r in runs])


def split_fidelity(ref_path: Path, onnx_path: Path, x: np.ndarray, split: str, threads: int = 1) -> dict:
    """Fidelity (`measure.fidelity.compare_outputs`: cosine, max/mean abs error, top-1 agreement for score outputs) of the
    ONNX model at `onnx_path` to the one at `ref_path` on the inputs `x` of `split`, recorded with the split's
    name and sample count. One input; a fixed batch of 1 is run sample by sample."""
    from edgeslim.measure.fidelity import compare_outputs
    from edgeslim.onnxkit.session import session

    def io(path: Path) -> tuple[str, bool, list[str]]:
        s = session(path, threads=threads)
        i = s.get_inputs()[0]
        return i.name, i.shape[0] == 1, [o.name for o in s.get_outputs()]

    rname, rfixed, names = io(ref_path)
    gname, gfixed, _ = io(onnx_path)
    ref = onnx_outputs(ref_path, rname, x, rfixed, threads)
    got = onnx_outputs(onnx_path, gname, x, gfixed, threads)
    return {"split": split, **compare_outputs(names, ref, got).as_dict(), "samples": len(x), "samples_compared": len(x)}


class FidelityStages(ModelHandler):
    """Stage metrics of a run without labels (`data.unlabelled`): held-out fidelity of every stage's ONNX to the
    reference ONNX (the original file, or the baseline stage's export of a PyTorch model), validation fidelity,
    the measurement core's counts and device figures; the final interleaved timing; results.json."""

    input_name = "input"
    fixed_batch = False
    source: Path | None = None  # the reference ONNX when it is known up front (an ONNX file given to run)

    def _reference(self, onnx_path: Path) -> Path:
        if self.source is not None:
            return self.source
        base = self._out / "stages" / "00_baseline" / "model.onnx"
        return base if base.is_file() else onnx_path  # the baseline stage is its own reference

    def write_splits(self, out: Path, task: Any) -> None:
        """The held-out inputs as an .npz named for the model's input (what `measure --inputs` takes)."""
        import io

        buf = io.BytesIO()
        np.savez(buf, **{self.input_name: task.x_test})
        self._out = out
        self._test_npz = out / "splits" / "test.npz"
        write_bytes(self._test_npz, buf.getvalue())

    def resumed(self, folder: Path, metrics: dict, task: Any, dev: str, dev_name: str) -> None:
        pass  # the device figures were measured for the run's device (kept in run.json)

    def stage_metrics(self, onnx_path: Path, model: Any, task: Any, size_path: Path | None, tmp: Path,
                      dev: str) -> dict:
        from edgeslim.measure.core import measure_model

        m = measure_model(onnx_path, task=None, device=dev, size_path=size_path, threads=self.threads,
                          latency=False, inputs=self.inputs_npz(onnx_path)).as_dict()
        for k in ("name", "runtime", "inputs", "warnings", "latency_runs", "fidelity", "reference"):
            m.pop(k, None)
        out: dict = {**m, "accuracy": None, "latency_ms_p50": None}
        if task.metric != "fidelity":  # labels (--task): top-1 accuracy on the test split, as for any task
            from edgeslim.onnxkit.session import onnx_accuracy

            out["accuracy"] = onnx_accuracy(onnx_path, task.x_test, task.y_test)
            out["accuracy_split"] = "test"
        out.update(self.fidelity_fields(self._reference(onnx_path), onnx_path, task))
        return out

    def inputs_npz(self, onnx_path: Path) -> Path:
        """The held-out inputs as an .npz for the measurement core, named for `onnx_path`'s inputs."""
        return self._test_npz

    def fidelity_fields(self, ref_path: Path, onnx_path: Path, task: Any) -> dict:
        """`fidelity` (held-out) and `fidelity_val` of the stage's ONNX to the reference ONNX."""
        from edgeslim.measure.fidelity import compare_outputs
        from edgeslim.onnxkit.session import session

        out = {}
        names = [o.name for o in session(ref_path).get_outputs()]
        for split, x in (("test", task.x_test), ("val", task.x_val)):
            ref = onnx_outputs(ref_path, self.input_name, x, self.fixed_batch)
            got = onnx_outputs(onnx_path, self.input_name, x, self.fixed_batch)
            f = compare_outputs(names, ref, got)
            out["fidelity" if split == "test" else "fidelity_val"] = {"split": split, "samples": len(x),
                                                                      **f.as_dict(), "samples_compared": len(x)}
        return out

    feed_of: Any = None  # (onnx path, rows) -> feed, for models whose stages change the interface (run.streams)

    def stage_line(self, name: str, m: dict) -> str:
        f = m["fidelity"]
        acc = f"accuracy {m['accuracy']:.4f}  " if m.get("accuracy") is not None else ""
        top1 = f" top-1 agreement {100 * f['top1_agreement']:.1f}%" if f.get("top1_agreement") is not None else ""
        if f.get("map_iou") is not None:
            top1 += f" map IoU {f['map_iou']:.4f}"
        if f.get("decisions_changed") is not None:
            top1 += f" streaming decisions changed {100 * f['decisions_changed']:.2f}%"
        where = "held-out stream" if f.get("mode") == "stream" else "held-out"
        return (f"[{name}] {acc}{where} cosine {f['cosine']:.4f}{top1}  max abs err {f['max_abs_err']:.3g}  "
                f"size {m['size_bytes']} B")

    def finish(self, out: Path, stages: list[dict], task: Any, recipe: Recipe, measure: Measurer, ident: dict,
               dev_name: str, report: bool, quiet: bool) -> dict:
        from edgeslim.report.results import write_results
        from edgeslim.run.together import time_stages

        time_stages(out, stages, task, recipe.batches if not self.fixed_batch else (1,), measure,
                    input_name=self.input_name, feed_of=self.feed_of)
        results = {"model": ident["model"], "kind": self.kind, "task": task.summary(), "recipe": recipe.source,
                   "device": dev_name, "stages": stages,
                   "splits": {"train": "training, calibration, Taylor gradients", "val": "every pick (fidelity_val)",
                              "test": "held out: fidelity (reported), parity; nothing trains or picks on it"}}
        if getattr(task, "meta", {}).get("streams"):  # recurrent state: [start, end) of each split's streams
            results["streams"] = {"blocks": task.meta["streams"], "state": task.meta.get("state"),
                                  "how": "consecutive samples of the inputs as streams, each model carrying its "
                                         "own state from the inputs' state at the start of a block"}
        write_results(out, results)
        if report:
            from edgeslim.report.run_html import write_run_html

            write_run_html(out, results)
        return results


class OnnxHandler(FidelityStages):
    kind = "onnx"

    def __init__(self, spec: dict, threads: int = 1):
        super().__init__(spec, threads)
        self.source = Path(spec["source"])
        self.input_name = spec["input_name"]
        self.fixed_batch = bool(spec.get("fixed_batch"))
        self.pending_baseline = True

    def _reopen(self, folder: Path) -> tuple[Any, dict]:
        import json

        from safetensors.torch import load_file

        from edgeslim.models.spec import resize_to_state_dict

        spec = json.loads((folder / models.io.SPEC).read_text())
        net = convert(Path(spec["source"]), tuple(spec["input_shape"]), per_sample=bool(spec.get("per_sample")))
        state = load_file(str(folder / models.io.WEIGHTS))
        resize_to_state_dict(net, state)
        net.load_state_dict(state, strict=True)
        return net.eval(), spec

    def teacher_loader(self, out: Path, original: Any) -> Any:
        return lambda: self._reopen(out / "stages" / "00_baseline")[0]

    def reopen(self, folder: Path) -> tuple[Any, dict | None] | None:
        return self._reopen(folder) if (folder / models.io.WEIGHTS).exists() else None

    def resumed(self, folder: Path, metrics: dict, task: Any, dev: str, dev_name: str) -> None:
        if folder.name.startswith("00_"):
            self.pending_baseline = False

    def export(self, model: Any, onnx_path: Path, task: Any) -> dict:
        from edgeslim.onnxtorch import conversion_parity, export_converted

        feeds = {self.input_name: task.x_test[:1]}
        assert self.source is not None
        if self.pending_baseline:  # the baseline is the original file as given; the conversion is checked on it
            self.pending_baseline = False
            shutil.copyfile(self.source, onnx_path)
            errs = conversion_parity(self.source, model.inner, {self.input_name: task.x_test[:4] if not self.fixed_batch
                                                     else task.x_test[:1]})
            return {"conversion_parity_max_abs_diff": errs, "parity_split": "test"}
        res = export_converted(model.inner, feeds, onnx_path, dynamic=not self.fixed_batch)
        # aligned_convs: convolutions whose channels the export zero-padded for ONNX Runtime's NCHWc kernels;
        # static_shapes_folded: Shape reads of static dims written as constants; views_collapsed: nodes fewer
        # once view-op and constant Slice chains are collapsed; ops_rewritten: ops made cheaper (`cheap_ops`)
        return {"parity_max_abs_diff": res["parity_max_abs_diff"], "parity_split": "test",
                "aligned_convs": res.get("aligned_convs", 0), "static_shapes_folded": res.get("static_shapes_folded", 0),
                "views_collapsed": res.get("views_collapsed", 0), "ops_rewritten": res.get("ops_rewritten", 0)}
