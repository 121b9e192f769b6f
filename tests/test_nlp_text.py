"""The text task (built-in sentences, .txt / .jsonl loaders) and the fidelity metrics: numpy only, so
these run without the nlp extra."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.errors import EdgeslimError
from edgeslim.nlp import INSTALL_HINT, require_transformers
from edgeslim.nlp.fidelity import fidelity, mean_cosine, nearest_neighbours, nn_agreement, paraphrase_recall
from edgeslim.nlp.text import load_text_task, read_sentences, sentences, transfer_sentences


def test_builtin_sentences_split_keeps_groups_whole():
    t = sentences()
    assert len(t.train) + len(t.test) >= 300
    assert not set(t.train) & set(t.test)  # calibration and evaluation never share a sentence
    groups = [g for g in t.test_groups if g is not None]
    counts = {g: groups.count(g) for g in groups}
    assert len(counts) >= 50 and all(c >= 2 for c in counts.values())  # both halves of each pair in test
    assert sentences().test == t.test  # the split is fixed


def test_txt_and_jsonl_loaders(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("first sentence\n\n  second one  \nthird\n")
    assert read_sentences(txt) == (["first sentence", "second one", "third"], [None, None, None])
    js = tmp_path / "s.jsonl"
    js.write_text('{"text": "a cat sat", "group": "g1"}\n{"text": "a cat was sitting", "group": "g1"}\n'
                  '{"text": "rain today", "group": 7}\n{"text": "no group here"}\n')
    texts, groups = read_sentences(js)
    assert texts[1] == "a cat was sitting" and groups == ["g1", "g1", "7", None]
    task = load_text_task(str(js), seed=0)
    assert sorted(task.train + task.test) == sorted(texts)
    pair = {i for i, g in enumerate(task.test_groups) if g == "g1"}
    assert len(pair) in (0, 2)  # a group is never split between calibration and evaluation


@pytest.mark.parametrize("content, where", [
    ("", "no sentences"),
    ('{"text": "fine"}\n{"text": broken}\n', ":2: invalid JSON"),
    ('{"text": "fine"}\n{"txt": "wrong key"}\n', ":2: each line must be an object"),
    ('{"text": "x", "group": [1]}\n', ":1: 'group' must be"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, where):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(EdgeslimError) as e:
        read_sentences(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and where in msg


def test_text_loader_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(EdgeslimError, match="empty.txt: no sentences"):
        read_sentences(empty)
    with pytest.raises(EdgeslimError, match="no such file"):
        read_sentences(tmp_path / "missing.txt")
    with pytest.raises(EdgeslimError, match="unknown text task 'data.csv'"):
        load_text_task("data.csv")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EdgeslimError, match="not UTF-8"):
        read_sentences(tmp_path / "bin.txt")


def test_transfer_sentences_recombine_words():
    base = ["the cat sat on the mat", "rain is expected tomorrow", "open the window please"]
    a = transfer_sentences(base, 20, seed=3)
    assert a == transfer_sentences(base, 20, seed=3) and len(a) == 20
    vocab = {w for s in base for w in s.split()}
    assert all(s and set(s.split()) <= vocab for s in a)
    assert transfer_sentences(base[:1], 5, seed=0) == []


def test_fidelity_identical_is_one():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 8))
    f = fidelity(e, e, [None] * 20)
    assert f["cosine"] == pytest.approx(1.0) and f["nn_agreement"] == 1.0 and f["paraphrase_recall"] is None
    assert mean_cosine(3 * e, e) == pytest.approx(1.0)  # scale does not matter


def test_fidelity_hand_computed():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    # row 1 rotated to the other cluster: cos(row, ref row) = [1, ~0.11, 1, 1]
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.1, 0.9]])
    c1 = float(np.dot(emb[1], ref[1]) / np.linalg.norm(ref[1]))
    assert mean_cosine(emb, ref) == pytest.approx((3 + c1) / 4)
    assert nearest_neighbours(ref).tolist() == [1, 0, 3, 2]
    # under emb: 0 -> 3 (the only other x-leaning row), 1 -> 2 (identical), 2 -> 1, 3 -> 1 (tie 1/2: lowest)
    assert nearest_neighbours(emb).tolist() == [3, 2, 1, 1]
    assert nn_agreement(emb, ref) == 0.0
    assert paraphrase_recall(ref, ["a", "a", "b", "b"]) == 1.0
    assert paraphrase_recall(emb, ["a", "a", "b", "b"]) == 0.0
    assert paraphrase_recall(ref, ["a", None, "b", "b"]) == 1.0  # a group of one is not scored


def test_require_without_extra_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(EdgeslimError) as e:
        require_transformers()
    assert INSTALL_HINT in str(e.value) and "\n" not in str(e.value)


def test_minilm_recipe_parses_into_text_passes():
    from pathlib import Path

    from edgeslim.passes import PASSES
    from edgeslim.recipe import load_recipe

    r = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "minilm-compress.yaml")
    assert [s.name for s in r.steps] == ["encoder_prune_ffn", "encoder_int8_dynamic"]
    assert all(PASSES[s.name].takes("text") for s in r.steps)
    assert r.steps[0].config.ratio == 0.25 and r.steps[1].config.per_channel


def test_encoder_pass_config_errors_name_the_line():
    from edgeslim.recipe import parse_recipe

    with pytest.raises(EdgeslimError, match=r"r.yaml:3: encoder_prune_ffn: unknown key 'ratoi'"):
        parse_recipe("version: 1\npasses:\n  - encoder_prune_ffn: {ratoi: 0.5}\n", "r.yaml")
    with pytest.raises(EdgeslimError, match=r"r.yaml:4: 'encoder_prune_heads' changes a PyTorch model but follows 'encoder_int8_dynamic'"):
        parse_recipe("version: 1\npasses:\n  - encoder_int8_dynamic: {}\n  - encoder_prune_heads: {ratio: 0.5}\n",
                     "r.yaml")
