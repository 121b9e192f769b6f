"""Model handlers: what the one stage loop (`run.loop`) needs to know about a kind of model (Olive's shape).

A handler loads nothing itself at construction; the loop calls, per run: `begin` (references computed once),
`teacher_loader` (the original, for distillation), `working_copy`; per stage: `save` (the stage's model in a
form that reopens without the source file), `reopen` (resume), `export` (ONNX, parity-checked),
`complete_folder`, `stage_metrics`, `stage_line`; at the end `finish` (the interleaved timing of all stages
and the results files). Kinds: `zoo` (here), `pytorch` (`run.pytorch`), `text` (`run.text`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim import models
from edgeslim.data import Task
from edgeslim.measure.core import Measurer
from edgeslim.recipe import Recipe


class ModelHandler:
    """The contract of a model kind. `spec` is the architecture record stages carry (zoo: spec.json)."""

    kind = "zoo"
    save_baseline = True  # the baseline stage stores the model (resume and teacher read it back)
    onnx_passes_get_model = False  # after an ONNX-only stage, passes get the last PyTorch model (else None)

    def __init__(self, spec: dict | None = None, threads: int = 1):
        self.spec: dict = spec or {}
        self.threads = threads  # ONNX Runtime threads of the stage measurements

    def begin(self, original: Any, task: Any, seed: int) -> None:
        """Called once before the first stage."""

    def teacher_loader(self, out: Path, original: Any) -> Any:
        """A function returning the original model, for passes that distil from it."""
        return lambda: models.load_model(out / "stages" / "00_baseline")[0]

    def working_copy(self, original: Any) -> Any:
        return original

    def save(self, folder: Path, model: Any, spec: dict) -> None:
        models.save_model(folder, model, spec)

    def reopen(self, folder: Path) -> tuple[Any, dict | None] | None:
        """The stage's saved model and spec, or None when the stage is ONNX-only."""
        if not (folder / models.io.WEIGHTS).exists():
            return None
        return models.load_model(folder)

    def resumed(self, folder: Path, metrics: dict, task: Any, dev: str, dev_name: str) -> None:
        """A finished stage is reused: re-measure the figures that depend on the device when it changed."""
        from edgeslim.fsutil import write_json
        from edgeslim.run.stage_metrics import device_metrics

        if metrics.get("deploy_device") != dev_name:
            metrics.update(device_metrics(folder / "model.onnx", task, dev))
            write_json(folder / "metrics.json", metrics)

    def export(self, model: Any, onnx_path: Path, task: Any) -> dict:
        from edgeslim.deploy.export import export_onnx

        return export_onnx(model, task.input_shape, onnx_path, check=task.x_test[:64])

    def pass_onnx(self, folder: Path) -> Path:
        """The finished stage's ONNX file the next ONNX pass reads (`ctx.prev_onnx`)."""
        return folder / "model.onnx"

    def complete_folder(self, tmp: Path, model: Any) -> None:
        """Files every stage folder holds beside the model (e.g. a tokenizer)."""

    def stage_metrics(self, onnx_path: Path, model: Any, task: Any, size_path: Path | None, tmp: Path,
                      dev: str) -> dict:
        from edgeslim.run.stage_metrics import measure_stage

        m = measure_stage(onnx_path, task, model, size_path, threads=self.threads, device=dev,
                          predictions=tmp / "predictions.npz")
        if m.get("accuracy") is not None:
            m["accuracy_split"] = "test"  # measure.core: top-1 on task.x_test
        m["fidelity"] = self.test_fidelity(onnx_path, task, tmp)
        return m

    def test_fidelity(self, onnx_path: Path, task: Any, tmp: Path) -> dict:
        """Fidelity of the stage's ONNX to the baseline stage's on the test split (the baseline is its own
        reference); a stage whose outputs cannot be compared (another output layout) says why instead."""
        from edgeslim.run.onnx import split_fidelity

        base = tmp.parent / "00_baseline" / "model.onnx"  # stage folders are made beside it (fsutil.atomic_dir)
        ref = base if base.is_file() else onnx_path
        try:
            return {**split_fidelity(ref, onnx_path, task.x_test, "test", self.threads), "reference": "00_baseline"}
        except Exception as e:  # noqa: BLE001 - a measurement that cannot be made is reported, never fatal
            return {"split": "test", "reference": "00_baseline", "not_compared": str(e).splitlines()[0][:200]}

    def stage_line(self, name: str, m: dict) -> str:
        return (f"[{name}] accuracy {m['accuracy']:.4f}  size {m['size_bytes']} B  "
                f"p50 {m['latency_ms_p50']:.3f} ms")

    def finish(self, out: Path, stages: list[dict], task: Task, recipe: Recipe, measure: Measurer, ident: dict,
               dev_name: str, report: bool, quiet: bool) -> dict:
        """Time all stages together (interleaved, one loop), compare them, write results.json and the report."""
        from edgeslim.report.results import write_results
        from edgeslim.run.together import time_stages

        time_stages(out, stages, task, recipe.batches, measure)  # the table's latencies, all stages in one loop
        results = {"model": ident["model"], "task": task.summary(), "recipe": recipe.source, "device": dev_name,
                   "stages": stages, **self.results_extra()}
        if report:
            from edgeslim.run.stage_compare import compare_stages

            compare_stages(out, stages, task)
        write_results(out, results)
        if report:
            from edgeslim.report.run_html import write_run_html

            write_run_html(out, results)
        return results

    def results_extra(self) -> dict:
        """Top-level results.json fields of this kind (the zoo adds none: its fields are the contract)."""
        return {}


class PickleHandler(ModelHandler):
    """A trusted full pickle given as a zoo-style run (kept as before: the original is the teacher)."""

    def teacher_loader(self, out: Path, original: Any) -> Any:
        return lambda: original
