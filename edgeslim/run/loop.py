"""THE stage loop: a recipe's passes in order over a model handler (`run.handlers`), whatever the model
came from (an edgeslim zoo folder, a PyTorch program, an ONNX file, a Hugging Face text encoder).

```
RUN/run.json                 what was run (model, task, recipe digest, seed[, kind]): resume checks it; the device
RUN/recipe.yaml
RUN/stages/00_baseline/      the handler's saved model (if any), model.onnx, metrics.json
RUN/stages/NN_<pass>/        ...
RUN/results.json, RUN/report.md, RUN/report.html
```
A stage folder appears only when complete (`fsutil.atomic_dir`), so a killed run resumes from the last
finished stage; an interruption says which stage it stopped in. Each stage is exported to ONNX once and
measured by the handler as it finishes. At the end the handler times every stage's ONNX model together,
interleaved in one loop (the table's latencies and speed-ups), and writes the results.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from edgeslim import interrupt
from edgeslim.devices import load_device
from edgeslim.fsutil import atomic_dir, write_json, write_text
from edgeslim.measure.core import Measurer
from edgeslim.passes import PASSES, RunContext
from edgeslim.recipe import Recipe
from edgeslim.run.handlers import ModelHandler
from edgeslim.run.options import RunOptions

RESUME = "finished stages are kept"


def run_stages(h: ModelHandler, recipe: Recipe, original: Any, task: Any, out: Path, ident: dict,
               opts: RunOptions) -> dict:
    """Run (or resume) every stage of `recipe` on `original` through handler `h` with `opts` (its `device`
    resolved: `RunOptions.resolved`); returns the results dict."""
    assert opts.device is not None, "run_stages takes the device resolved"
    seed, quiet, dev, threads = opts.seed, opts.quiet, opts.device, opts.threads
    write_text(out / "recipe.yaml", recipe.text)
    dev_name = load_device(dev).name
    h.begin(original, task, seed)
    ctx = RunContext(stage_dir=out, spec=h.spec, finetune=recipe.finetune, seed=seed, quiet=quiet,
                     teacher_loader=h.teacher_loader(out, original), measure=Measurer(threads, device=dev),
                     export=lambda m, p: h.export(m, p, task))
    last = h.working_copy(original)  # the last PyTorch model (ONNX-only stages keep the one before)
    onnx_only = False  # the latest stage is ONNX-only (zoo passes then get no PyTorch model)
    stages: list[dict] = []
    names = ["baseline"] + [s.name for s in recipe.steps]
    for i, name in enumerate(names):
        folder = out / "stages" / f"{i:02d}_{name}"
        if (folder / "metrics.json").exists():  # finished earlier: resume from it
            metrics = json.loads((folder / "metrics.json").read_text())
            log(quiet, f"[{name}] done earlier, resuming from {folder.name}")
            reopened = h.reopen(folder)
            if reopened is not None:
                last, spec = reopened
                ctx.spec = spec if spec is not None else ctx.spec
            onnx_only = reopened is None and i > 0
            ctx.carry = metrics.get("carry", {})
            ctx.prev_onnx = h.pass_onnx(folder)
            h.resumed(folder, metrics, task, dev, dev_name)
            stages.append(metrics)
            continue
        t0 = time.perf_counter()
        with atomic_dir(folder) as tmp, interrupt.during(f"stage {folder.name} of {out}", RESUME):
            ctx.stage_dir, ctx.stage_name = tmp, folder.name
            notes: dict = {}
            size_path = None
            onnx_path = tmp / "model.onnx"
            result_onnx = None
            store_sparse = False
            if i == 0:
                if h.save_baseline:
                    h.save(tmp, last, ctx.spec)
            else:
                step = recipe.steps[i - 1]
                info = PASSES[name]
                log(quiet, f"[{name}] running (recipe line {step.line})")
                given = None if onnx_only and not h.onnx_passes_get_model else last
                res = info.fn(given, task, step.config, ctx)
                result_onnx, notes, store_sparse = res.onnx, res.notes, res.store_sparse
                ctx.spec = res.spec or ctx.spec
                ctx.carry = {**ctx.carry, **res.carry}
                if res.artifact is not None:
                    size_path = res.artifact
                if info.produces == "onnx" and result_onnx is None:
                    raise AssertionError(f"onnx pass {name} returned no ONNX model")
                onnx_only = res.model is None
                if res.model is not None:
                    last = res.model
                    h.save(tmp, last, ctx.spec)
            if result_onnx is None:
                notes.update(h.export(last, onnx_path, task))
            elif result_onnx != onnx_path:
                shutil.copyfile(result_onnx, onnx_path)
            if store_sparse:  # from the stage's one export
                from edgeslim.formats.sparse import write_sparse_stage

                notes.update(write_sparse_stage(onnx_path, tmp))
            h.complete_folder(tmp, last)
            metrics = {"name": name, **h.stage_metrics(onnx_path, last, task, size_path, tmp, dev)}
            metrics["onnx"] = str((folder / "model.onnx").relative_to(out))
            metrics["seconds"] = round(time.perf_counter() - t0, 2)  # wall time of the stage's work
            metrics["notes"] = notes
            metrics["carry"] = ctx.carry
            write_json(tmp / "metrics.json", metrics)
        ctx.prev_onnx = h.pass_onnx(folder)
        stages.append(metrics)
        log(quiet, h.stage_line(name, metrics))
    return h.finish(out, stages, task, recipe, ctx.measure, ident, dev_name, opts.report, quiet)


def log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)
