"""Recipe validation: every mistake names the line and the valid choices."""

from __future__ import annotations

import pytest

from edgeslim.errors import EdgeslimError
from edgeslim.recipe import load_recipe, parse_recipe


def test_valid_recipe():
    r = parse_recipe("version: 1\nfinetune: {epochs: 2}\npasses:\n  - magnitude_prune: {sparsity: 0.3}\n"
                     "  - quantize_int8\n")
    assert [s.name for s in r.steps] == ["magnitude_prune", "quantize_int8"]
    assert r.steps[0].config.sparsity == 0.3 and r.steps[0].line == 4
    assert r.finetune.epochs == 2


def test_unknown_pass_names_line_and_choices():
    with pytest.raises(EdgeslimError, match=r"r.yaml:4: unknown pass 'magnitude_prun'; valid: .*magnitude_prune"):
        parse_recipe("version: 1\npasses:\n  - quantize_int8: {}\n  - magnitude_prun: {}\n", "r.yaml")


def test_unknown_key_names_its_line():
    text = "version: 1\npasses:\n  - magnitude_prune:\n      sparsity: 0.5\n      sparsty: 0.2\n"
    with pytest.raises(EdgeslimError, match=r"r.yaml:5: magnitude_prune: unknown key 'sparsty'; valid: .*sparsity"):
        parse_recipe(text, "r.yaml")


def test_bad_value():
    with pytest.raises(EdgeslimError, match=r":3: magnitude_prune: 'sparsity'.*less than 1"):
        parse_recipe("version: 1\npasses:\n  - magnitude_prune: {sparsity: 1.5}\n")


def test_version_and_top_keys():
    with pytest.raises(EdgeslimError, match="'version' must be 1"):
        parse_recipe("passes:\n  - quantize_int8\n")
    with pytest.raises(EdgeslimError, match=r":2: unknown top-level key 'pases'"):
        parse_recipe("version: 1\npases: []\n")


def test_invalid_yaml_has_line():
    with pytest.raises(EdgeslimError, match=r"x.yaml:\d+: invalid YAML"):
        parse_recipe("version: 1\npasses: [a, b\nfoo: 1\n", "x.yaml")


def test_torch_pass_after_onnx_pass_rejected():
    with pytest.raises(EdgeslimError, match=r":4: 'magnitude_prune' changes a PyTorch model but follows"):
        parse_recipe("version: 1\npasses:\n  - quantize_int8\n  - magnitude_prune\n")


def test_what_a_pass_consumes_is_checked_at_parse_time():
    from edgeslim.passes import PASSES

    assert (PASSES["qat"].consumes, PASSES["qat"].produces) == ("torch", "onnx")
    assert (PASSES["quantize_int8"].consumes, PASSES["quantize_int8"].produces) == ("onnx", "onnx")
    assert PASSES["tflite"].must_be_last and not PASSES["magnitude_prune"].must_be_last
    # qat needs the PyTorch model: not after an ONNX-only stage, even though it produces ONNX itself
    with pytest.raises(EdgeslimError, match=r"r.yaml:4: 'qat' changes a PyTorch model but follows "
                                            r"'quantize_int8' \(line 3\)"):
        parse_recipe("version: 1\npasses:\n  - quantize_int8\n  - qat: {weight_bits: 4}\n", "r.yaml")
    # what follows qat must consume ONNX: another quantizer of the ONNX file parses, pruning does not
    parse_recipe("version: 1\npasses:\n  - magnitude_prune\n  - qat\n  - quantize_fp16\n")
    with pytest.raises(EdgeslimError, match=r":4: 'structured_prune' changes a PyTorch model but follows 'qat'"):
        parse_recipe("version: 1\npasses:\n  - qat\n  - structured_prune\n")


def test_nothing_may_follow_a_must_be_last_pass():
    text = "version: 1\npasses:\n  - magnitude_prune\n  - tflite: {}\n  - quantize_int8\n"
    with pytest.raises(EdgeslimError, match=r"r.yaml:5: 'quantize_int8' follows 'tflite' \(line 4\), which must be "
                                            r"the last pass of a recipe"):
        parse_recipe(text, "r.yaml")
    assert [s.name for s in parse_recipe(text.rsplit("  - quantize_int8", 1)[0]).steps] == ["magnitude_prune", "tflite"]


def test_finetune_validated():
    with pytest.raises(EdgeslimError, match=r":2: finetune: unknown|:2: finetune: 'epoch'"):
        parse_recipe("version: 1\nfinetune: {epoch: 3}\npasses:\n  - quantize_int8\n")


def test_missing_file(tmp_path):
    with pytest.raises(EdgeslimError, match="cannot read recipe"):
        load_recipe(tmp_path / "none.yaml")


def test_shipped_recipes_validate():
    from pathlib import Path

    for p in sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml")):
        assert load_recipe(p).steps, p
