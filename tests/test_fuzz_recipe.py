"""Fuzzed recipes: whatever the YAML says, parsing ends in a Recipe or in one EdgeslimError line that
names the file; never another exception, never a hang."""

from __future__ import annotations

import math
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_helpers import assert_one_line_error, assert_user_error, listing, main_inproc

from edgeslim.errors import EdgeslimError
from edgeslim.passes import PASSES
from edgeslim.recipe import parse_recipe

SOURCE = "fuzz.yaml"
NAMES = sorted(n for n in PASSES if not n.startswith("_"))
VALID = {"version": 1, "finetune": {"epochs": 1, "lr": 0.001},
         "passes": [{"magnitude_prune": {"sparsity": 0.5}}, {"quantize_int8": {"calibration_samples": 32}}]}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["0", "1e400", ".inf", "-1", "generate:0", "../../etc/passwd", "~"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def parse_or_error(text: str) -> object:
    """Parse `text`; the only failure allowed is a one-line EdgeslimError naming the file."""
    t0 = time.perf_counter()
    try:
        r = parse_recipe(text, SOURCE)
    except EdgeslimError as e:
        assert_one_line_error(e, SOURCE)
        r = None
    assert time.perf_counter() - t0 < 5, "parsing must not hang"
    if r is not None:  # accepted: every number in it is finite
        for s in r.steps:
            _finite(s.config.model_dump())
        _finite(r.finetune.model_dump())
    return r


def _finite(obj: object) -> None:
    if isinstance(obj, float):
        assert math.isfinite(obj), obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _finite(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _finite(v)


@st.composite
def mutated(draw: st.DrawFn) -> dict:
    """A valid recipe with one to three mutations: a field of a real pass set to anything, keys
    dropped or invented, pass names changed, the version changed."""
    doc = yaml.safe_load(yaml.safe_dump(VALID))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "field", "drop", "unknown", "pass", "version", "top"]))
        if kind == "field":  # a real field of a real pass, any value
            name = draw(st.sampled_from(NAMES))
            field = draw(st.sampled_from(sorted(PASSES[name].config.model_fields) or ["x"]))
            if not isinstance(doc.get("passes"), list):
                doc["passes"] = []
            doc["passes"].insert(draw(st.integers(0, len(doc["passes"]))), {name: {field: draw(values)}})
        elif kind == "drop":
            doc.pop(draw(st.sampled_from(sorted(doc))), None)
        elif kind == "unknown":
            doc[draw(st.text(min_size=1, max_size=6))] = draw(values)
        elif kind == "pass" and isinstance(doc.get("passes"), list) and doc["passes"]:
            doc["passes"][0] = {draw(st.text(max_size=16)): draw(values)}
        elif kind == "version":
            doc["version"] = draw(st.one_of(scalars, st.sampled_from([0, 2, "1", 1.0, True])))
        else:
            doc[draw(st.sampled_from(["finetune", "passes", "description"]))] = draw(values)
    return doc


@settings(max_examples=250)
@given(mutated())
def test_mutated_recipes_parse_or_fail_in_one_line(doc: dict) -> None:
    parse_or_error(yaml.safe_dump(doc, sort_keys=False))


@settings(max_examples=150)
@given(st.text(alphabet=st.sampled_from(list("version: 1\npasses:-[]{},&*!<>|'\"#.0aq_ ")), max_size=120))
def test_random_yaml_text_parses_or_fails_in_one_line(text: str) -> None:
    parse_or_error(text)


@settings(max_examples=60)
@given(st.binary(max_size=200))
def test_random_bytes_parse_or_fail_in_one_line(data: bytes) -> None:
    parse_or_error(data.decode("utf-8", errors="replace"))


@settings(max_examples=80)
@given(st.sampled_from(["version", "finetune", "passes", "sparsity", "epochs"]), st.data())
def test_duplicate_keys_are_refused(key: str, data: st.DataObject) -> None:
    text = {
        "version": "version: 1\nversion: 1\npasses: [quantize_int8]\n",
        "finetune": "version: 1\nfinetune: {epochs: 1}\nfinetune: {epochs: 2}\npasses: [quantize_int8]\n",
        "passes": "version: 1\npasses: [quantize_int8]\npasses: [quantize_dynamic]\n",
        "sparsity": "version: 1\npasses:\n  - magnitude_prune: {sparsity: 0.5, sparsity: 0.9}\n",
        "epochs": "version: 1\npasses:\n  - magnitude_prune:\n      finetune: {epochs: 1, lr: 0.1, epochs: 3}\n",
    }[key]
    with pytest.raises(EdgeslimError, match=rf"{SOURCE}:\d+: duplicate key '{key}'") as e:
        parse_recipe(text, SOURCE)
    assert_one_line_error(e.value)


@pytest.mark.parametrize("step", [
    "magnitude_prune: {sparsity: 1.5}", "magnitude_prune: {sparsity: -0.1}", "structured_prune: {ratio: 1.0}",
    "weight_share: {bits: 0}", "weight_share: {bits: 33}", "lowbit: {bits: 0}", "lowbit: {bits: 33}",
    "qat: {weight_bits: 33}", "qat: {weight_bits: 0}", "mixed_precision: {bit_choices: [0, 4]}",
    "mixed_precision: {bit_choices: [4, 33]}", "mixed_precision: {bit_choices: []}", "entropy_code: {gap_bits: 33}",
    "nm_prune: {n: 4, m: 4}", "early_exit: {thresholds: [1.5]}", "early_exit: {thresholds: [-0.5]}",
    "sensitivity_prune: {ratios: [0.5, 1.5]}", "structured_prune: {layer_ratios: {conv1: 1.2}}",
    "structured_prune: {measure_batches: [0]}", "quantize_int8: {candidates: [u9s9]}",
    "distill: {teacher_weights: [-1.0]}", "distill: {transfer: 'generate:0'}", "magnitude_prune: {finetune: {lr: .inf}}",
    "magnitude_prune: {finetune: {epochs: -1}}", "quantize_int8: {calibration_samples: 0}",
])
def test_out_of_range_values_are_refused(step: str) -> None:
    with pytest.raises(EdgeslimError, match=rf"^{SOURCE}:3: ") as e:
        parse_recipe(f"version: 1\npasses:\n  - {step}\n", SOURCE)
    assert_one_line_error(e.value)


@pytest.mark.parametrize("version", ["", "version: 0", "version: 2", "version: '1'", "version: true", "version: 1.5",
                                     "version: [1]"])
def test_wrong_or_missing_version(version: str) -> None:
    with pytest.raises(EdgeslimError, match=f"{SOURCE}: 'version' must be 1"):
        parse_recipe(f"{version}\npasses: [quantize_int8]\n", SOURCE)


def test_alias_bombs_and_recursion_do_not_hang() -> None:
    lol = "version: 1\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    for text in (lol + "passes: [quantize_int8]\n", "version: 1\npasses: &p [*p]\n",
                 "version: 1\npasses:\n  - distill: {student: &s {h1: *s}}\n"):
        t0 = time.perf_counter()
        with pytest.raises(EdgeslimError) as e:
            parse_recipe(text, SOURCE)
        assert time.perf_counter() - t0 < 5
        assert_one_line_error(e.value, SOURCE)


def test_bad_recipes_through_the_cli_exit_1_in_one_line_and_write_nothing(tmp_path) -> None:
    """A handful of the above through the real command: exit 1, one stderr line, no run folder."""
    for i, text in enumerate(["version: 1\npasses:\n  - magnitude_prune: {sparsity: 1.5}\n",
                              "version: 1\npasses:\n  - magnitude_prune: {sparsity: 0.5, sparsity: 0.5}\n",
                              "version: 2\npasses: [quantize_int8]\n", "\x00\x01 not yaml: [",
                              "version: 1\npasses:\n  - no_such_pass: {}\n"]):
        rec = tmp_path / f"r{i}.yaml"
        rec.write_text(text)
        code, _, err = main_inproc("run", str(rec), "--model", str(tmp_path / "m"), "--task", "digits",
                                   "--out", str(tmp_path / "run"))
        assert_user_error(code, err, f"r{i}.yaml")
        assert listing(tmp_path / "run") == []
