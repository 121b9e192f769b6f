"""Measure text encoders: fidelity to a reference on the evaluation sentences, counts, size, and latency
of all models timed together (interleaved, one process) at sequence lengths 128 and 32. Used by the
text-encoder run (every stage vs the original) and by `edgeslim measure` on text encoders (Hugging Face
folders and text-run stage folders, each vs the first model given).

Latency is ONNX Runtime on the CPU, batch 1, 1 intra-op thread, every position attended; the feeds are
int64 token ids and masks. Timing all stages in one interleaved loop makes their ratios comparable even
on a busy machine (load lands on all of them alike); absolute ms depend on the host.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.measure.core import Measurer
from edgeslim.measure.latency import ort_runner
from edgeslim.nlp import is_text_encoder_folder
from edgeslim.nlp.encoder import META, WEIGHTS, SentenceEncoder, count_encoder_params, synthetic_feed
from edgeslim.nlp.export import onnx_embed, weight_storage
from edgeslim.nlp.fidelity import fidelity
from edgeslim.nlp.surgery import widths
from edgeslim.nlp.text import TextTask
from edgeslim.onnxkit.session import session

SEQ_MAIN, SEQ_SHORT = 128, 32
ROUNDS = 60  # interleaved rounds per sequence length (each runs every stage once)


def encoder_macs(enc: SentenceEncoder, seq: int) -> int | None:
    """Multiply-accumulates of one sentence of `seq` tokens through the encoder layers (Linear layers plus
    the attention score and context products); None for layouts edgeslim cannot read."""
    try:
        heads, ffn = widths(enc.backbone)
    except Exception:  # not BERT-style: no count rather than a wrong one
        return None
    cfg = enc.backbone.config
    h = int(cfg.hidden_size)
    d = int(getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads)
    total = 0
    for a, f in zip(heads, ffn):
        total += seq * (3 * h * a * d + a * d * h)  # Q, K, V and output projections
        total += 2 * seq * seq * a * d  # scores Q K^T and context softmax(.) V
        total += seq * 2 * h * f  # FFN in and out
    return int(total)


def stage_metrics(onnx_path: Path, enc: SentenceEncoder, task: TextTask, ref: np.ndarray,
                  threads: int = 1) -> dict:
    """Fidelity (cosine, nn_agreement, paraphrase_recall) on the evaluation split, counts and size.
    `enc` is the stage's PyTorch encoder, or the last one before an ONNX-only stage (counts, tokenizer)."""
    emb = onnx_embed(onnx_path, enc, task.test, threads=threads)
    m: dict = {"accuracy": None, **fidelity(emb, ref, task.test_groups)}
    params = count_encoder_params(enc)
    m.update(params=params, nonzero_params=params, macs=encoder_macs(enc, SEQ_MAIN), macs_seq_len=SEQ_MAIN)
    m["size_bytes"] = onnx_path.stat().st_size
    m["onnx_size_bytes"] = m["size_bytes"]
    m["weight_bytes"] = weight_storage(onnx_path)["bytes_by_dtype"]
    return m


def time_encoders(paths: dict[str, Path], measure: Measurer | None = None, rounds: int = ROUNDS,
                  seqs: tuple[int, int] = (SEQ_MAIN, SEQ_SHORT), vocab: int = 1000) -> dict[str, dict]:
    """{name: latency fields (ms)} with all encoders timed in one interleaved loop per sequence length by the
    measurement core's timer (`measure`: the run's `Measurer`, default one thread). `latency_ms_*` are at
    `seqs[0]` tokens, `latency_ms_*_seq<n>` at `seqs[1]`; batch 1, every position attended."""
    m = measure or Measurer()
    sess = {k: session(p, threads=m.threads) for k, p in paths.items()}
    out: dict[str, dict] = {k: {} for k in paths}
    for j, seq in enumerate(seqs):
        runners = {k: ort_runner(s, synthetic_feed([i.name for i in s.get_inputs()], seq, vocab=vocab))
                   for k, s in sess.items()}
        lat = m.time(runners, rounds=rounds, per_round=1, warmup=3)
        for k, v in lat.items():
            if j == 0:
                out[k].update(v.as_dict(), latency_ms_p50_interleaved=round(v.p50_ms, 5),
                              latency_ms_p90_interleaved=round(v.p90_ms, 5), latency_interleaved_rounds=v.runs)
            else:
                out[k].update({f"latency_ms_p50_seq{seq}": round(v.p50_ms, 4),
                               f"latency_ms_p90_seq{seq}": round(v.p90_ms, 4)})
            out[k].update(latency_seq_len=seqs[0], latency_batch=1, latency_threads=m.threads,
                          latency_timing=f"interleaved: {len(paths)} models in one loop, {rounds} rounds per "
                                         "sequence length")
    return out


def time_text_stages(run_dir: Path, stages: list[dict], measure: Measurer | None = None, vocab: int = 1000,
                rounds: int = ROUNDS) -> None:
    """Time every stage's ONNX encoder together at the end of a text run (`time_encoders`) and add, per stage,
    its latency fields and `speedup_vs_baseline` / `speedup_vs_baseline_seq32` (baseline p50 / stage p50)."""
    keys = {f"{i}:{s['name']}": s for i, s in enumerate(stages)}
    lat = time_encoders({k: run_dir / s["onnx"] for k, s in keys.items()}, measure, rounds=rounds, vocab=vocab)
    for k, s in keys.items():
        s.update(lat[k])
    base = stages[0]
    for s in stages:
        s["speedup_vs_baseline"] = round(base["latency_ms_p50"] / s["latency_ms_p50"], 3)
        s[f"speedup_vs_baseline_seq{SEQ_SHORT}"] = round(base[f"latency_ms_p50_seq{SEQ_SHORT}"]
                                                         / s[f"latency_ms_p50_seq{SEQ_SHORT}"], 3)


@dataclass
class OnnxEncoder:
    """What tokenising needs, for a text stage folder that holds only `model.onnx` + `tokenizer.json`."""

    tokenizer: Any
    meta: dict
    input_names: list[str]


def is_text_model(path: Path) -> bool:
    """A Hugging Face folder, or a text stage folder (model.onnx, tokenizer.json, edgeslim_encoder.json)."""
    p = Path(path)
    return is_text_encoder_folder(p) or (p.is_dir() and all((p / f).is_file() for f in
                                                            ("model.onnx", "tokenizer.json", META)))


def measure_text(paths: list[Path], task_spec: str | None, threads: int = 1, rounds: int = 60) -> list[dict]:
    from edgeslim.nlp import require_transformers

    require_transformers()
    import onnx
    from tokenizers import Tokenizer

    from edgeslim.nlp.encoder import load_encoder
    from edgeslim.nlp.export import export_encoder
    from edgeslim.nlp.text import load_text_task

    task = load_text_task(task_spec or "sentences")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths: dict[str, Path] = {}
        embs = []
        vocab = 1 << 30
        for k, p in enumerate(map(Path, paths)):
            if not is_text_model(p):
                raise EdgeslimError(f"{p}: not a text encoder (a Hugging Face folder or a text run's stage folder); "
                                    "measure text encoders and other models in separate calls")
            row: dict = {"name": str(p), "accuracy": None}
            if (p / WEIGHTS).is_file() and (p / "config.json").is_file():
                enc: Any = load_encoder(p)
                path = Path(tmp) / f"{k}.onnx"
                export_encoder(enc, path, check_texts=task.test[:11])
                params = count_encoder_params(enc)
                row.update(params=params, nonzero_params=params, macs=encoder_macs(enc, 128),
                           size_bytes=(p / WEIGHTS).stat().st_size, onnx_size_bytes=path.stat().st_size)
            else:
                path = p / "model.onnx"
                meta = json.loads((p / META).read_text())
                m = onnx.load(str(path))
                enc = OnnxEncoder(Tokenizer.from_file(str(p / "tokenizer.json")), meta, [i.name for i in m.graph.input])
                params = int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))
                row.update(params=params, nonzero_params=params, macs=None, size_bytes=path.stat().st_size,
                           onnx_size_bytes=path.stat().st_size)
            embs.append(onnx_embed(path, enc, task.test, threads=threads))
            vocab = min(vocab, int(enc.tokenizer.get_vocab_size()))
            onnx_paths[f"{k}"] = path
            rows.append(row)
        for row, e in zip(rows, embs):
            row.update(fidelity(e, embs[0], task.test_groups))
        lat = time_encoders(onnx_paths, Measurer(threads), rounds=rounds, vocab=vocab)
    for k, row in enumerate(rows):
        row.update(lat[f"{k}"], reference=rows[0]["name"], task=task.name)
    return rows
