"""edgeslim as an installed package: recipes are package data found by name, every file read at run time
lives inside the package, the wheel carries them, `--version` and `recipes` work. The full install into a
fresh virtualenv (`edgeslim demo` and `run structured-50` from a temporary folder) is `.ci/wheel-check`."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import edgeslim
from edgeslim import api
from edgeslim.errors import EdgeslimError
from edgeslim.recipe import RECIPE_DIR, builtin_recipes, find_recipe, load_recipe, recipe_about

PKG = Path(edgeslim.__file__).resolve().parent
ROOT = PKG.parent


def test_recipes_are_package_data_and_the_old_path_still_works():
    assert RECIPE_DIR == PKG / "recipes" and api.RECIPES == RECIPE_DIR
    names = builtin_recipes()
    assert {"demo", "default", "structured-50", "int8-ptq", "minilm-compress"} <= set(names)
    assert (ROOT / "recipes").is_symlink() and (ROOT / "recipes").resolve() == RECIPE_DIR
    assert (ROOT / "recipes" / "structured-50.yaml").read_text() == names["structured-50"].read_text()


def test_recipe_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a run folder named like a recipe is not a recipe file
    assert find_recipe("structured-50") == RECIPE_DIR / "structured-50.yaml"
    assert find_recipe("demo") == RECIPE_DIR / "demo.yaml"
    assert find_recipe("int8-ptq.yaml") == RECIPE_DIR / "int8-ptq.yaml"
    r = load_recipe("structured-50")
    assert [s.name for s in r.steps] == ["structured_prune"] and r.steps[0].config.ratio == 0.5
    mine = tmp_path / "structured-50.yaml"  # a file of one's own wins over the built-in name
    mine.write_text("version: 1\npasses:\n  - quantize_int8: {}\n")
    assert find_recipe("structured-50.yaml").resolve() == mine
    assert find_recipe(str(tmp_path / "sub" / "x.yaml")) == tmp_path / "sub" / "x.yaml"  # a path stays a path


def test_unknown_recipe_name_lists_the_valid_ones():
    with pytest.raises(EdgeslimError) as e:
        load_recipe("structured-55")
    msg = str(e.value)
    assert "recipe 'structured-55'" in msg and "structured-50" in msg and "unstructured-92" in msg
    assert "\n" not in msg


def test_every_recipe_has_a_one_line_description():
    rows = api.list_recipes()
    assert [r["name"] for r in rows] == sorted(builtin_recipes())
    about = {r["name"]: r["about"] for r in rows}
    assert about["int8-ptq"].startswith("Post-training static INT8")
    assert all(a and "\n" not in a for a in about.values())
    p = RECIPE_DIR.parent / "recipes" / "structured-50.yaml"
    assert recipe_about(p).startswith("Structured pruning: physically remove 50%") and recipe_about(p).endswith("...")


def test_cli_version_and_recipes():
    from edgeslim.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"edgeslim {edgeslim.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", edgeslim.__version__)
    r = CliRunner().invoke(app, ["recipes", "--json"])
    assert r.exit_code == 0
    assert {x["name"] for x in json.loads(r.output)} == set(builtin_recipes())


def test_nothing_is_read_from_outside_the_package():
    """Files read at run time (recipes, device profiles, the sentences task) resolve inside edgeslim/: no
    module climbs above its package with `Path(__file__)...parent.parent`."""
    climbing = re.compile(r"__file__\)(\.resolve\(\))?\.parent\.parent")
    bad = [str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if climbing.search(p.read_text())]
    assert bad == []


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build the wheel")
def test_wheel_carries_recipes_devices_and_sentences(tmp_path):
    """`pip wheel` of this tree (a copy: the source tree stays clean) holds every recipe, device profile and
    the sentences task, at the paths the package reads them from."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        (src / f).write_bytes((ROOT / f).read_bytes())
    with tarfile.open(tmp_path / "pkg.tar", "w") as t:
        t.add(PKG, arcname="edgeslim", filter=lambda i: None if "__pycache__" in i.name else i)
    with tarfile.open(tmp_path / "pkg.tar") as t:
        t.extractall(src, filter="data")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "dist").glob("edgeslim-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    want = {f"edgeslim/recipes/{p.name}" for p in RECIPE_DIR.glob("*.yaml")}
    want |= {f"edgeslim/devices/{p.name}" for p in (PKG / "devices").glob("*.yaml")}
    want |= {"edgeslim/nlp/data/sentences.jsonl", "edgeslim/py.typed", "edgeslim/cli/app.py"}
    assert len(want) > 20 and want <= names, sorted(want - names)
    assert not any(n.startswith(("recipes/", "tests/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "edgeslim = edgeslim.cli:main" in zipfile.ZipFile(whl).read(meta).decode()
