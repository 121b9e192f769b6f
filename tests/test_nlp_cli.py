"""`edgeslim run` on a Hugging Face text-encoder folder, end to end through the CLI, with no --task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeslim.errors import EdgeslimError


def edgeslim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=600)


RECIPE = """version: 1
passes:
  - encoder_prune_ffn: {ratio: 0.5, multiple: 8, distill_epochs: 1, transfer: 40}
  - encoder_drop_layers: {keep: 1, distill_epochs: 0}
  - encoder_int8_dynamic: {keep_float: 1, sensitivity_samples: 16}
"""


def test_tasks_and_passes_list_the_text_parts():
    r = edgeslim("tasks", "--json")
    assert r.returncode == 0 and [t["name"] for t in json.loads(r.stdout)["text"]] == ["sentences"]
    assert any(".jsonl" in f for f in json.loads(r.stdout)["formats"])
    r = edgeslim("passes", "--json")
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"encoder_prune_heads", "encoder_prune_ffn", "encoder_drop_layers", "encoder_int8_dynamic",
            "encoder_int8_static", "encoder_fuse", "encoder_distill"} <= names


def test_run_text_encoder_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tiny_encoder import make_tiny_bert

    folder = make_tiny_bert(tmp_path / "bert")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    r = edgeslim("run", str(recipe), "--model", str(folder), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "cosine" in r.stdout and "NN agree" in r.stdout and "p50 @seq32" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["task"]["name"] == "sentences" and res["kind"] == "text-encoder"
    names = [s["name"] for s in res["stages"]]
    assert names == ["baseline", "encoder_prune_ffn", "encoder_drop_layers", "encoder_int8_dynamic"]
    for s in res["stages"]:
        for k in ("name", "accuracy", "params", "size_bytes", "latency_ms_p50", "latency_ms_p50_seq32", "onnx",
                  "cosine", "nn_agreement"):
            assert k in s, k
        assert s["accuracy"] is None and 0 < s["cosine"] <= 1.0 + 1e-6 and 0 <= s["nn_agreement"] <= 1
        assert s["latency_seq_len"] == 128 and s["latency_ms_p50"] > 0
    base, ffn, drop, q = res["stages"]
    assert base["cosine"] == pytest.approx(1.0, abs=1e-5) and base["nn_agreement"] == 1.0
    assert ffn["params"] < base["params"] and drop["params"] < ffn["params"] and q["params"] == drop["params"]
    assert q["size_bytes"] < drop["size_bytes"]
    assert (out / "stages" / "01_encoder_prune_ffn" / "model.safetensors").exists()
    assert (out / "stages" / "03_encoder_int8_dynamic" / "tokenizer.json").exists()
    report = (out / "report.md").read_text()
    assert "cosine" in report and "speed-up vs baseline @128" in report
    page = (out / "report.html").read_text()
    assert "NN agree" in page and "data:image/png;base64," in page and "<script" not in page
    assert json.loads((out / "run.json").read_text())["device"]  # the device is part of the run
    assert base["speedup_vs_baseline"] == 1.0 and all(s["speedup_vs_baseline"] > 0 for s in res["stages"])
    assert all(s["speedup_vs_baseline"] == pytest.approx(base["latency_ms_p50"] / s["latency_ms_p50"], rel=1e-2)
               for s in res["stages"])
    assert len({s["latency_timing"] for s in res["stages"]}) == 1  # one loop for all stages
    # resuming the same run re-times every stage together and keeps the stage results
    r2 = edgeslim("run", str(recipe), "--model", str(folder), "--out", str(out), "--json")
    assert r2.returncode == 0, r2.stderr
    again = json.loads(r2.stdout)
    assert [s["cosine"] for s in again["stages"]] == [s["cosine"] for s in res["stages"]]
    # measure: the original folder, a PyTorch stage folder and an ONNX-only stage folder, vs the first
    r3 = edgeslim("measure", str(folder), str(out / "stages" / "02_encoder_drop_layers"),
                  str(out / "stages" / "03_encoder_int8_dynamic"), "--json")
    assert r3.returncode == 0, r3.stderr
    rows = json.loads(r3.stdout)
    assert rows[0]["cosine"] == pytest.approx(1.0, abs=1e-5) and rows[0]["nn_agreement"] == 1.0
    assert rows[2]["cosine"] == pytest.approx(q["cosine"], abs=1e-4)  # same sentences, same reference
    assert all(r["latency_ms_p50"] > 0 and r["latency_ms_p50_seq32"] > 0 for r in rows)
    assert rows[1]["params"] == drop["params"]


def test_text_recipe_errors_are_one_line(tmp_path):
    pytest.importorskip("transformers")
    from tiny_encoder import make_tiny_bert

    folder = make_tiny_bert(tmp_path / "bert")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - magnitude_prune: {sparsity: 0.5}\n")
    r = edgeslim("run", str(recipe), "--model", str(folder), "--out", str(tmp_path / "run"))
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1
    assert "r.yaml:3: pass 'magnitude_prune' takes zoo or pytorch or onnx models, not a text encoder" in lines[0]
    assert "passes for text models: encoder_distill" in lines[0]
    assert not (tmp_path / "run").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops}\n')
    recipe.write_text("version: 1\npasses:\n  - encoder_int8_dynamic: {}\n")
    r = edgeslim("run", str(recipe), "--model", str(folder), "--task", str(bad), "--out", str(tmp_path / "run"))
    assert r.returncode == 1 and f"{bad}:2: invalid JSON" in r.stderr and "Traceback" not in r.stderr


def test_zoo_model_still_needs_a_task(tmp_path):
    from edgeslim import api

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - quantize_dynamic: {}\n")
    with pytest.raises(EdgeslimError, match="--task is required"):
        api.run(tmp_path, recipe, None, tmp_path / "run")
    with pytest.raises(EdgeslimError, match="task 'sentences' is a text task"):
        api.run(tmp_path, recipe, "sentences", tmp_path / "run")


BLOCKED = ("import sys; sys.modules['transformers'] = None; sys.modules['tokenizers'] = None; "
           "sys.argv = ['edgeslim'] + sys.argv[1:]; from edgeslim.cli import main; main()")


@pytest.mark.parametrize("cmd", ["run", "measure"])
def test_without_the_extra_one_line_says_how_to_install(tmp_path, cmd):
    """A new user without `transformers`: the text-encoder commands answer one line with the pip command and
    write nothing (the folder need not hold weights: the extra is checked first)."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - encoder_int8_dynamic: {}\n")
    args = ["run", str(recipe), "--model", str(folder), "--out", str(tmp_path / "run")] if cmd == "run" else \
        ["measure", str(folder)]
    r = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "pip install -e '.[nlp]'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
