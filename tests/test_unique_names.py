"""One name, one meaning: a public (no leading underscore) top-level function or class name is defined in one
module of the package. The few names defined twice are listed below, each with why; a new copy, or a listed
name that is no longer shared, fails here."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "edgeslim"

# The energy counter backends share one interface, so `measure.window` reads either without knowing which.
_COUNTERS = {"measure/nvml.py", "measure/rapl.py"}
ALLOWED: dict[str, tuple[set[str], str]] = {
    "available": (_COUNTERS, "energy counter backend interface (NVML, RAPL): is the counter readable here"),
    "snapshot": (_COUNTERS, "energy counter backend interface: read the counters at the window's start/end"),
    "joules_between": (_COUNTERS, "energy counter backend interface: energy between two snapshots (J)"),
    "main": ({"cli/app.py", "devices/calibrate.py", "search/pgcluster.py"},
             "entry point of a module run as a program (`edgeslim`, `python -m edgeslim.devices.calibrate`, "
             "`python -m edgeslim.search.pgcluster`)"),
}


def public_definitions() -> dict[str, set[str]]:
    """{name: modules (paths relative to the package) that define it at top level}."""
    where: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].add(path.relative_to(PKG).as_posix())
    return where


def cli_command_of_api(modules: set[str]) -> bool:
    """A CLI command function named as the `api` function it calls: the command's name is a contract (it is
    what users type) and so is the API call's; the CLI module only parses options and prints. (`api` re-exports
    the jobs of `api_measure`.)"""
    cli = {m for m in modules if m.startswith("cli/")}
    return len(cli) == 1 and len(modules - cli) == 1 and (modules - cli) <= {"api.py", "api_measure.py"}


def test_public_names_are_defined_once() -> None:
    shared = {n: ms for n, ms in public_definitions().items() if len(ms) > 1}
    unexplained = {n: sorted(ms) for n, ms in shared.items()
                   if not cli_command_of_api(ms) and (n not in ALLOWED or ALLOWED[n][0] != ms)}
    assert unexplained == {}, "rename one of them (one name, one meaning) or list it in ALLOWED with the reason"


def test_allow_list_is_short_and_current() -> None:
    shared = {n: ms for n, ms in public_definitions().items() if len(ms) > 1}
    stale = sorted(n for n in ALLOWED if n not in shared)
    assert stale == [], "drop names from ALLOWED that are no longer defined twice"
    assert len(ALLOWED) <= 5 and all(reason for _, reason in ALLOWED.values())
    # the rule for CLI commands covers the jobs a user runs, nothing else
    by_rule = sorted(n for n, ms in shared.items() if cli_command_of_api(ms))
    assert by_rule == ["distill", "measure", "optimize", "quant_report", "search", "sensitivity", "train",
                       "unpack"]


def test_the_renamed_collisions_stay_apart() -> None:
    # the examples: device fit vs curve fit, the three verdicts, the search report's own files
    where = public_definitions()
    assert where["device_fit"] == {"measure/device_fit.py"} and where["curve_fit"] == {"devices/calibrate.py"}
    assert "fit" not in where and "verdict" not in where and "compare" not in where and "Context" not in where
    assert where["stage_device_verdict"] == {"run/device_verdict.py"}
    assert where["time_stages"] == {"run/together.py"} and where["time_text_stages"] == {"measure/text_encoder.py"}
    assert (PKG / "report" / "search_html.py").is_file() and (PKG / "report" / "search_plots.py").is_file()
    assert not (PKG / "report" / "html.py").exists() and not (PKG / "measure" / "figures.py").exists()
    api = ast.parse((PKG / "api.py").read_text())
    assert "compile" not in {n.name for n in api.body if isinstance(n, ast.FunctionDef)}  # no builtin shadowed
