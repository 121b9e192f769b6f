"""The text-encoder handler (a Hugging Face folder) of the one stage loop.

```
RUN/stages/00_baseline/     model.onnx (plain export of the original), tokenizer.json, metrics.json
RUN/stages/01_<pass>/       config.json + model.safetensors + edgeslim_encoder.json (PyTorch stages),
                            model.onnx, tokenizer.json, metrics.json
```
Per-stage metrics are fidelity to the original encoder on the evaluation sentences, counts and size; latency
is measured at the end for all stages together through the run's measurement core (the one interleaved timer;
`edgeslim.measure.text_encoder.time_text_stages`) and re-measured on every resume, so the table's speed-ups are
always ratios from one loop. Text-encoder figures are ONNX Runtime on this host (no device estimate yet).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from edgeslim.fsutil import write_json
from edgeslim.measure.core import Measurer
from edgeslim.recipe import Recipe
from edgeslim.run.handlers import ModelHandler


class TextHandler(ModelHandler):
    kind = "text"
    save_baseline = False  # the original folder is the baseline; its stage holds the ONNX and tokenizer
    onnx_passes_get_model = True  # the ONNX passes of encoders read the tokenizer and meta of the last encoder

    def begin(self, original: Any, task: Any, seed: int) -> None:
        import torch

        from edgeslim.nlp.encoder import embed

        torch.manual_seed(seed)
        self.ref = embed(original, task.test)  # the original's embeddings: what every stage is compared with
        self.original = original

    def teacher_loader(self, out: Path, original: Any) -> Any:
        return lambda: original  # passes edit a copy (working_copy)

    def working_copy(self, original: Any) -> Any:
        from edgeslim.nlp.encoder import SentenceEncoder

        return SentenceEncoder(copy.deepcopy(original.backbone), original.tokenizer, dict(original.meta)).eval()

    def save(self, folder: Path, model: Any, spec: dict) -> None:
        from edgeslim.nlp.encoder import save_encoder

        save_encoder(folder, model)

    def reopen(self, folder: Path) -> tuple[Any, dict | None] | None:
        from edgeslim.nlp.encoder import WEIGHTS, load_encoder

        return (load_encoder(folder), None) if (folder / WEIGHTS).exists() else None

    def resumed(self, folder: Path, metrics: dict, task: Any, dev: str, dev_name: str) -> None:
        pass  # no device figures for encoders: nothing to re-measure

    def export(self, model: Any, onnx_path: Path, task: Any) -> dict:
        from edgeslim.nlp.export import export_encoder

        return export_encoder(model, onnx_path, check_texts=task.test[:11])

    def complete_folder(self, tmp: Path, model: Any) -> None:
        from edgeslim.nlp.encoder import META

        if not (tmp / "tokenizer.json").exists():  # every stage folder is deployable: ONNX + tokenizer
            (tmp / "tokenizer.json").write_text(model.tokenizer.to_str())
            write_json(tmp / META, model.meta)

    def stage_metrics(self, onnx_path: Path, model: Any, task: Any, size_path: Path | None, tmp: Path,
                      dev: str) -> dict:
        from edgeslim.measure.text_encoder import stage_metrics

        return stage_metrics(onnx_path, model, task, self.ref, threads=self.threads)

    def stage_line(self, name: str, m: dict) -> str:
        return (f"[{name}] cosine {m['cosine']:.4f}  nn agreement {100 * m['nn_agreement']:.1f}%  "
                f"size {m['size_bytes']} B")

    def finish(self, out: Path, stages: list[dict], task: Any, recipe: Recipe, measure: Measurer, ident: dict,
               dev_name: str, report: bool, quiet: bool) -> dict:
        from edgeslim.measure.text_encoder import time_text_stages
        from edgeslim.nlp.report import write_text_results
        from edgeslim.run.loop import log

        log(quiet, f"timing all {len(stages)} stages together (ONNX Runtime, batch 1, {self.threads} thread(s), "
                   "seq 128 and 32, interleaved)")
        time_text_stages(out, stages, measure, vocab=int(self.original.tokenizer.get_vocab_size()))
        results = {"model": ident["model"], "kind": "text-encoder", "task": task.summary(), "recipe": recipe.source,
                   "device": dev_name, "latency_host": "ONNX Runtime on this host (CPU)",
                   "stages": stages, "encoder": {k: v for k, v in self.original.meta.items() if k != "source"}}
        from edgeslim.resources import peak_rss

        results["peak_rss_bytes"] = peak_rss()
        write_text_results(out, results)
        return results
