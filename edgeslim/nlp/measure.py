"""`edgeslim measure` on text encoders: Hugging Face folders and the stage folders of text runs.

Every model is measured on the same evaluation sentences and timed in one interleaved loop at sequence
lengths 128 and 32 (ONNX Runtime, batch 1); the first model given is the reference that `cosine` and
`nn_agreement` compare the others with (the first compares with itself: 1.0).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.nlp import is_text_encoder_folder
from edgeslim.nlp.encoder import META, WEIGHTS


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
    from edgeslim.nlp import require

    require()
    import onnx
    from tokenizers import Tokenizer

    from edgeslim.nlp.encoder import count_params, load_encoder
    from edgeslim.nlp.export import export_encoder, onnx_embed
    from edgeslim.nlp.fidelity import fidelity
    from edgeslim.nlp.stage import encoder_macs, time_stages
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
                params = count_params(enc)
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
        lat = time_stages(onnx_paths, rounds=rounds, threads=threads, vocab=vocab)
    for k, row in enumerate(rows):
        row.update(lat[f"{k}"], reference=rows[0]["name"], task=task.name)
    return rows
