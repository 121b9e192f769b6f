"""Run a recipe on a text encoder (a Hugging Face folder): baseline export, each pass, then one
interleaved timing of all stages.

```
RUN/run.json (identity + the device), RUN/recipe.yaml
RUN/stages/00_baseline/     model.onnx (plain export of the original), tokenizer.json, metrics.json
RUN/stages/01_<pass>/       config.json + model.safetensors + edgeslim_encoder.json (PyTorch stages),
                            model.onnx, tokenizer.json, metrics.json
RUN/results.json, RUN/report.md, RUN/report.html
```
Stage folders appear only when complete (resume from the last one). Per-stage metrics are fidelity to
the original encoder on the evaluation sentences, counts and size; latency is measured at the end for
all stages together through the run's measurement core (`ctx.measure`, the one interleaved timer;
`edgeslim.measure.text_encoder.time_stages`) and re-measured on every resume, so the table's speed-ups are
always ratios from one loop. The folder is locked while the run works in it (`runlock`), and an interruption
says which stage it stopped in. The device (`--device`, the recipe's `device:`, EDGESLIM_DEVICE) is recorded
in run.json; text-encoder figures are ONNX Runtime on this host (no device estimate for encoders yet).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

from edgeslim import accelerator, interrupt, runlock
from edgeslim.devices import DEFAULT_DEVICE, load_device
from edgeslim.errors import EdgeslimError, choices
from edgeslim.fsutil import atomic_dir, write_json
from edgeslim.measure.core import Measurer
from edgeslim.measure.text_encoder import stage_metrics, time_stages
from edgeslim.nlp.config import is_text_pass
from edgeslim.nlp.encoder import META, WEIGHTS, SentenceEncoder, embed, load_encoder, save_encoder
from edgeslim.nlp.export import export_encoder
from edgeslim.nlp.report import write_text_results
from edgeslim.nlp.text import TextTask
from edgeslim.passes import PASSES, RunContext
from edgeslim.pipeline import RESUME, copy_recipe
from edgeslim.recipe import Recipe
from edgeslim.train import TrainConfig


def check_text_recipe(recipe: Recipe) -> None:
    for s in recipe.steps:
        if not is_text_pass(s.name):
            raise EdgeslimError(
                f"{recipe.source}:{s.line}: pass '{s.name}' works on edgeslim zoo models, not on a text encoder; "
                f"text-encoder passes: {choices(n for n in PASSES if is_text_pass(n))}"
            )


def run_text_recipe(recipe: Recipe, model_dir: Path, task: TextTask, out: Path, *, seed: int = 0,
                    quiet: bool = False, force: bool = False, task_spec: str = "", device: str | None = None,
                    threads: int = 1) -> dict:
    """Run (or resume) `recipe` on the encoder in `model_dir`; returns the results dict."""
    check_text_recipe(recipe)
    out = Path(out)
    model_dir = Path(model_dir)
    dev = device or recipe.device or os.environ.get("EDGESLIM_DEVICE") or DEFAULT_DEVICE
    load_device(dev)  # an unknown device is one line
    original = load_encoder(model_dir)  # loads and checks the folder before the run folder is claimed
    ident = {"model": str(model_dir.resolve()), "task": task_spec or task.name, "recipe_digest": recipe.digest,
             "seed": seed, "kind": "text-encoder"}
    runlock.check_claim(out, ident, force)
    with runlock.hold(out):
        runlock.claim(out, ident, force, {"device": dev, "accelerator": accelerator.describe()})
        return _run_text_stages(recipe, original, task, out, ident, seed, quiet, dev, threads)


def _run_text_stages(recipe: Recipe, original: SentenceEncoder, task: TextTask, out: Path, ident: dict, seed: int,
                     quiet: bool, dev: str, threads: int) -> dict:
    import torch

    copy_recipe(out, recipe)
    torch.manual_seed(seed)
    ref = embed(original, task.test)  # the original's embeddings: what every stage is compared with
    ctx = RunContext(stage_dir=out, spec={}, finetune=TrainConfig(), seed=seed, quiet=quiet,
                     teacher_loader=lambda: original, measure=Measurer(threads))  # passes edit a copy
    # the last PyTorch encoder (ONNX-only stages keep the one before), a copy passes may edit in place
    current = SentenceEncoder(copy.deepcopy(original.backbone), original.tokenizer, dict(original.meta)).eval()
    stages: list[dict] = []
    names = ["baseline"] + [s.name for s in recipe.steps]
    for i, name in enumerate(names):
        folder = out / "stages" / f"{i:02d}_{name}"
        if (folder / "metrics.json").exists():
            metrics = json.loads((folder / "metrics.json").read_text())
            _log(quiet, f"[{name}] done earlier, resuming from {folder.name}")
            if (folder / WEIGHTS).exists():
                current = load_encoder(folder)
            ctx.carry = metrics.get("carry", {})
            ctx.prev_onnx = folder / "model.onnx"
            stages.append(metrics)
            continue
        t0 = time.perf_counter()
        with atomic_dir(folder) as tmp, interrupt.during(f"stage {folder.name} of {out}", RESUME):
            ctx.stage_dir, ctx.stage_name = tmp, folder.name
            notes: dict = {}
            onnx_path = tmp / "model.onnx"
            result_onnx = None
            if i > 0:
                step = recipe.steps[i - 1]
                _log(quiet, f"[{name}] running (recipe line {step.line})")
                res = PASSES[name].fn(current, task, step.config, ctx)  # type: ignore[arg-type]
                notes, result_onnx = res.notes, res.onnx
                ctx.carry = {**ctx.carry, **res.carry}
                if res.model is not None:
                    current = res.model  # type: ignore[assignment]
                    save_encoder(tmp, current)
            if result_onnx is None:
                notes.update(export_encoder(current, onnx_path, check_texts=task.test[:11]))
            elif result_onnx != onnx_path:
                shutil.copyfile(result_onnx, onnx_path)
            if not (tmp / "tokenizer.json").exists():  # every stage folder is deployable: ONNX + tokenizer
                (tmp / "tokenizer.json").write_text(current.tokenizer.to_str())
                write_json(tmp / META, current.meta)
            metrics = {"name": name, **stage_metrics(onnx_path, current, task, ref, threads=threads)}
            metrics["onnx"] = str((folder / "model.onnx").relative_to(out))
            metrics["seconds"] = round(time.perf_counter() - t0, 2)  # wall time of the stage's work
            metrics["notes"] = notes
            metrics["carry"] = ctx.carry
            write_json(tmp / "metrics.json", metrics)
        ctx.prev_onnx = folder / "model.onnx"
        stages.append(metrics)
        _log(quiet, f"[{name}] cosine {metrics['cosine']:.4f}  nn agreement {100 * metrics['nn_agreement']:.1f}%  "
                    f"size {metrics['size_bytes']} B")
    _log(quiet, f"timing all {len(stages)} stages together (ONNX Runtime, batch 1, {threads} thread(s), "
                "seq 128 and 32, interleaved)")
    time_stages(out, stages, ctx.measure, vocab=int(original.tokenizer.get_vocab_size()))
    results = {"model": ident["model"], "kind": "text-encoder", "task": task.summary(), "recipe": recipe.source,
               "device": load_device(dev).name, "latency_host": "ONNX Runtime on this host (CPU)",
               "stages": stages, "encoder": {k: v for k, v in original.meta.items() if k != "source"}}
    write_text_results(out, results)
    return results


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


__all__ = ["run_text_recipe", "check_text_recipe"]
