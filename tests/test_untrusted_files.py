"""Untrusted files: ONNX external data that points outside the model's folder, recipe paths (resolved beside the
recipe, checked before writing; outputs kept inside the run folder), and an audit of the package source for
unpickling outside --trust-pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from reliability_helpers import assert_one_line_error, assert_user_error, main_inproc

from edgeslim import api
from edgeslim.errors import EdgeslimError

# ------------------------------------------------------------------------------ ONNX external data


def _external(tmp_path: Path, location: str) -> Path:
    """A model whose weight lives in `location` (relative to the model's folder)."""
    from onnx import TensorProto, helper

    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    np.ones((4, 4), np.float32).tofile(tmp_path / "secret.bin")
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    p = folder / "m.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return p


@pytest.mark.parametrize("location,why", [("../secret.bin", "outside the model's folder"),
                                          ("ABSOLUTE", "absolute path"), ("link.bin", "points outside"),
                                          ("missing.bin", "missing")])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, location: str, why: str) -> None:
    if location == "ABSOLUTE":
        location = str(tmp_path / "secret.bin")
    p = _external(tmp_path, location)
    if location == "link.bin":
        (p.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    for args in (["measure", str(p), "--runs", "3"], ["fit", str(p)], ["arena", str(p)],
                 ["compile", str(p), "-o", str(tmp_path / "c.onnx")], ["optimize", str(p), "-o", str(tmp_path / "o.onnx")]):
        code, _, err = main_inproc(*args)
        assert_user_error(code, err, "m.onnx", "tensor 'W'", why)
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "o.onnx").exists()


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    from edgeslim.untrusted import check_onnx_file

    p = _external(tmp_path, "w.bin")
    np.ones((4, 4), np.float32).tofile(p.parent / "w.bin")
    assert isinstance(check_onnx_file(p), onnx.ModelProto)
    assert api.measure([p], runs=3)[0]["latency_ms_p50"] > 0


# ---------------------------------------------------------------------------------------- recipe paths


def test_recipe_paths_resolve_beside_the_recipe_and_are_checked_before_writing(tmp_path: Path, monkeypatch) -> None:
    from edgeslim.recipe import load_recipe

    rdir = tmp_path / "recipes"
    rdir.mkdir()
    np.savez(rdir / "unlabelled.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    (rdir / "r.yaml").write_text("version: 1\npasses:\n  - distill: {transfer: unlabelled.npz, teachers: [../t1]}\n")
    (tmp_path / "t1").mkdir()
    monkeypatch.chdir(tmp_path / "t1")  # the working directory is elsewhere: found beside the recipe
    cfg = load_recipe(rdir / "r.yaml").steps[0].config
    assert cfg.transfer == str((rdir / "unlabelled.npz").resolve()) and cfg.teachers == [str(tmp_path / "t1")]
    (rdir / "r.yaml").write_text("version: 1\npasses:\n  - distill: {transfer: nowhere.npz}\n")
    with pytest.raises(EdgeslimError, match=r"r.yaml:3: distill.transfer: 'nowhere.npz' not found") as e:
        load_recipe(rdir / "r.yaml")
    assert_one_line_error(e.value)
    (rdir / "r.yaml").write_text("version: 1\npasses:\n  - distill: {transfer: 'generate:100'}\n")
    assert load_recipe(rdir / "r.yaml").steps[0].config.transfer == "generate:100"  # not a path


@pytest.mark.parametrize("name", ["../escape.bin", "/tmp/abs.bin", "a/../../b.bin", "~/x.bin", ""])
def test_output_names_in_a_recipe_cannot_leave_the_run_folder(name: str) -> None:
    from pydantic import Field

    from edgeslim.passes.base import PassConfig, PassResult, register
    from edgeslim.recipe import Recipe, parse_recipe
    from edgeslim.untrusted import resolve_recipe_paths

    class _Out(PassConfig):
        file: str = Field("out.bin", json_schema_extra={"path": "output"})

    register("_test_output", _Out)(lambda m, t, c, ctx: PassResult(m))
    ok = resolve_recipe_paths(parse_recipe("version: 1\npasses:\n  - _test_output: {file: sub/ok.bin}\n"), None)
    assert isinstance(ok, Recipe)
    with pytest.raises(EdgeslimError, match="must be a relative file name inside the run folder") as e:
        resolve_recipe_paths(parse_recipe(f"version: 1\npasses:\n  - _test_output: {{file: '{name}'}}\n"), None)
    assert_one_line_error(e.value)


# ------------------------------------------------------------------------------ unpickling audit


def test_no_unpickling_anywhere_but_behind_trust_pickle() -> None:
    """An audit of the package source: torch.load only with weights_only=True (tensors, no code) except the
    one call behind --trust-pickle; np.load always with allow_pickle=False; no pickle module."""
    root = Path(__file__).resolve().parent.parent / "edgeslim"
    bad = []
    for f in sorted(root.rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            where = f"{f.relative_to(root)}:{n}: {line.strip()}"
            if "torch.load(" in line and "weights_only=True" not in line:
                if not (f.name == "io.py" and "weights_only=False" in line):  # models.io._load_pickle (trusted)
                    bad.append(where)
            if "np.load(" in line and "allow_pickle=False" not in line:
                bad.append(where)
            if line.strip().startswith(("import pickle", "from pickle")) or "pickle.load" in line:
                bad.append(where)
    assert bad == [], bad
    src = (root / "models" / "io.py").read_text()
    assert src.index("if not trust_pickle:") < src.index("weights_only=False")  # refused before it is reached
