"""The import graph keeps the layers of the README's architecture section: an import only ever points
down (or sideways inside one layer, without cycles), counting imports inside functions too. Also: every
package imports alone in a fresh interpreter, and loads nothing above its layer when it does."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "edgeslim"

# Bottom up. A unit is a subpackage or a top-level module of edgeslim ("edgeslim" itself: its __init__).
LAYERS: list[set[str]] = [
    {"edgeslim", "errors", "fsutil",                             # no edgeslim imports beyond these
     "interrupt", "exitcodes", "runlock",                        # signals, exit codes, the run-folder lock
     "accelerator", "configs"},                                  # where training runs; config objects built
    {"onnxkit", "untrusted"},                                    # the ONNX toolkit; checks of untrusted files
    {"data", "devices", "models", "train", "report", "litert",   # what a task, device, model is; backends
     "guard", "resources"},                                      # NaN rollback, memory checked up front
    {"formats", "quant", "prune", "distill", "deploy", "nlp",    # techniques' building blocks, file formats
     "onnxtorch"},                                               # ONNX -> trainable torch module and back
    {"measure", "energy"},                                       # figures of a model, never changing it
    {"passes"},                                                  # pure transforms registered by name
    {"recipe", "run", "pipeline", "text_pipeline", "onnxopt", "search",  # jobs made of passes and measurements
     "devices.calibrate"},                                       # a maintainer tool (see TOOLS)
    {"api", "api_measure", "api_catalog"},                       # every job a Python user needs
    {"cli"},                                                     # parse, call api, print
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# Maintainer tools kept beside what they write, counted as their own unit: `python -m edgeslim.devices.calibrate`
# fits a device profile (devices/*.yaml) on published runs with the measurement core; nothing in the package
# imports it, so `devices` stays below `measure`.
TOOLS = {"edgeslim.devices.calibrate": "devices.calibrate"}


def unit_of(module: str) -> str:
    if module in TOOLS:
        return TOOLS[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every edgeslim module named by an import statement anywhere in the file (functions included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            if node.module:
                out.add(node.module)
                # `from edgeslim import models` imports the subpackage edgeslim.models
                out.update(f"{node.module}.{a.name}" for a in node.names if node.module == "edgeslim")
    return {m for m in out if m == "edgeslim" or m.startswith("edgeslim.")}


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = unit_of(module_name(path))
        deps = {unit_of(m) for m in imports_of(path) if m != "edgeslim"}
        graph.setdefault(src, set()).update(d for d in deps if d != src)
    return graph


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in ROOT.rglob("*.py")}
    assert units - set(LAYER) == set(), "place new packages in LAYERS (and the README's architecture section)"
    assert set(LAYER) - units == set(), "LAYERS names a package that no longer exists"


def test_imports_point_down_only():
    upward = sorted(f"{src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
                    for src, deps in unit_graph().items() for dst in deps if LAYER[dst] > LAYER[src])
    assert upward == []


def test_no_import_cycles_between_packages():
    graph = unit_graph()
    seen: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    cycles: list[list[str]] = []

    def visit(n: str, stack: list[str]) -> None:
        seen[n] = 1
        for d in sorted(graph.get(n, ())):
            if seen.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in seen:
                visit(d, [*stack, d])
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n, [n])
    assert cycles == []


def test_the_graph_is_what_the_checks_read():
    # guard against a parser that silently sees nothing: known edges, including function-level ones
    g = unit_graph()
    assert {"errors", "run", "recipe"} <= g["pipeline"] and {"measure", "passes", "recipe", "report"} <= g["run"]
    assert "api" in g["cli"] and "pipeline" in g["api"]  # api.run imports the pipeline inside the function
    assert g["errors"] == set() and g["fsutil"] == set()


PACKAGES = sorted(u for u in LAYER if u != "edgeslim" and u not in TOOLS.values())


@pytest.mark.parametrize("unit", PACKAGES)
def test_each_package_imports_alone_and_loads_nothing_above_it(unit):
    code = (f"import json, sys; import edgeslim.{unit}; "
            "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('edgeslim.')})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    above = [u for u in loaded if LAYER.get(u, -1) > LAYER[unit]]
    assert above == [], f"importing edgeslim.{unit} loads higher layers {above}"
