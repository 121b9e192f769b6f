"""Text tasks for sentence encoders: the built-in `sentences` set and users' `.txt` / `.jsonl` files.

A text task has no labels: an encoder is judged by how faithfully a compressed copy reproduces the
original's sentence embeddings (`edgeslim.nlp.fidelity`). Sentences are split into a calibration /
fine-tuning split (`train`: quantization ranges, pruning importance, distillation) and an evaluation
split (`test`: every fidelity figure). Paraphrase groups are kept whole inside one split, so the
evaluation split still holds both halves of each pair and retrieval of the paraphrase means something.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError, choices

EVAL_FRACTION = 0.5  # share of groups (paraphrase sets and single sentences) in the evaluation split


@dataclass(repr=False)  # a short repr, not every sentence
class TextTask:
    name: str
    train: list[str]  # calibration / fine-tuning sentences
    test: list[str]  # evaluation sentences (never used to fit anything)
    test_groups: list[str | None]  # paraphrase / near-duplicate group of each test sentence, or None
    about: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return ()  # token sequences of any length

    def __repr__(self) -> str:
        return f"TextTask({self.name!r}, {len(self.train)} calibration / {len(self.test)} test sentences)"

    def summary(self) -> dict:
        groups = {g for g in self.test_groups if g is not None}
        return {
            "name": self.name, "kind": "text", "input_shape": None, "num_classes": None,
            "train": len(self.train), "val": 0, "test": len(self.test), "paraphrase_groups_in_test": len(groups),
            "metric": "cosine / nn_agreement to the original encoder",
        }


def _split(texts: list[str], groups: list[str | None], name: str, seed: int, about: str) -> TextTask:
    """Split by group (a sentence without a group is its own group), `EVAL_FRACTION` of groups to test."""
    keys = [g if g is not None else f"#{i}" for i, g in enumerate(groups)]
    uniq = sorted(set(keys))
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    n_eval = max(1, int(round(len(order) * EVAL_FRACTION)))
    if len(order) > 1:
        n_eval = min(n_eval, len(order) - 1)  # keep at least one group for calibration
    test_keys = set(order[:n_eval])
    train = [t for t, k in zip(texts, keys) if k not in test_keys]
    test = [t for t, k in zip(texts, keys) if k in test_keys]
    test_groups = [g for g, k in zip(groups, keys) if k in test_keys]
    if not train:  # a single-sentence file: calibrate on the evaluation sentence rather than on nothing
        train = list(test)
    return TextTask(name, train, test, test_groups, about)


def sentences(seed: int = 0) -> TextTask:
    """The built-in set: 537 English sentences written for edgeslim over 22 topics, with 177 paraphrase
    pairs, 3 paraphrase triples and 44 near-duplicate pairs (one word or number changed)."""
    src = resources.files("edgeslim.nlp").joinpath("data/sentences.jsonl")
    texts, groups = _read_jsonl(src.read_text(encoding="utf-8").splitlines(), "edgeslim/nlp/data/sentences.jsonl")
    # The split is fixed (seed 1234), like the digits test split: every run compares on the same sentences.
    return _split(texts, groups, "sentences", 1234, BUILTIN_TEXT["sentences"])


BUILTIN_TEXT: dict[str, str] = {
    "sentences": "537 English sentences (22 topics; paraphrase pairs and near-duplicates), for text encoders",
}
TEXT_FORMATS = (
    ".txt with one sentence a line (text encoders)",
    ".jsonl with a 'text' field per line, optional 'group' marking paraphrases (text encoders)",
)


def is_text_task(spec: str) -> bool:
    return spec in BUILTIN_TEXT or Path(spec).suffix.lower() in (".txt", ".jsonl")


def load_text_task(spec: str, seed: int = 0) -> TextTask:
    """`spec`: `sentences` or a path to a `.txt` (one sentence a line) or `.jsonl` file."""
    if spec == "sentences":
        return sentences(seed)
    p = Path(spec)
    if p.suffix.lower() not in (".txt", ".jsonl"):
        raise EdgeslimError(
            f"unknown text task '{spec}': use a built-in ({choices(BUILTIN_TEXT)}), a .txt (one sentence a line) "
            "or a .jsonl file with a 'text' field"
        )
    texts, groups = read_sentences(p)
    return _split(texts, groups, p.name, seed, f"sentences from {p}")


def read_sentences(path: Path) -> tuple[list[str], list[str | None]]:
    """Sentences (and groups, `None` where absent) of a `.txt` or `.jsonl` file; one-line errors."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeslimError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise EdgeslimError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise EdgeslimError(f"{path}: cannot read ({e.strerror})") from None
    lines = raw.splitlines()
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(lines, str(path))
    texts = [ln.strip() for ln in lines if ln.strip()]
    if not texts:
        raise EdgeslimError(f"{path}: no sentences (the file is empty; write one sentence a line)")
    return texts, [None] * len(texts)


def _read_jsonl(lines: list[str], where: str) -> tuple[list[str], list[str | None]]:
    texts: list[str] = []
    groups: list[str | None] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgeslimError(f"{where}:{i}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise EdgeslimError(f"{where}:{i}: each line must be an object with a non-empty string 'text' field")
        g = obj.get("group")
        if g is not None and not isinstance(g, (str, int)):
            raise EdgeslimError(f"{where}:{i}: 'group' must be a string or an integer, got {type(g).__name__}")
        texts.append(obj["text"].strip())
        groups.append(None if g is None else str(g))
    if not texts:
        raise EdgeslimError(f"{where}: no sentences (the file is empty; write one JSON object with 'text' a line)")
    return texts, groups


def transfer_sentences(texts: list[str], n: int, seed: int) -> list[str]:
    """`n` extra unlabelled sentences recombined from `texts` (the start of one sentence joined to the end
    of another, cut at a word boundary): more inputs for embedding distillation without new data. They
    only need to look like the task's text; the teacher's embeddings are the targets."""
    rng = np.random.default_rng(seed)
    words = [t.split() for t in texts if t.split()]
    if len(words) < 2 or n <= 0:
        return []
    out = []
    for _ in range(n):
        a, b = rng.choice(len(words), 2, replace=False)
        wa, wb = words[a], words[b]
        ca = int(rng.integers(1, len(wa) + 1))
        cb = int(rng.integers(0, len(wb)))
        out.append(" ".join(wa[:ca] + wb[cb:]))
    return out
