"""Search: units, footprint predictions, cheap rejection, impossible budgets, Pareto/hypervolume, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from test_search_helpers import FAST, cli, make_env

from edgeslim.errors import EdgeslimError
from edgeslim.search.constraints import Budget, make_budget, parse_ms, parse_size
from edgeslim.search.pareto import front_indices, hypervolume
from edgeslim.search.space import extreme_footprint, predict_footprint, ratio_param
from edgeslim.search.study import SearchConfig, prepare_study, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_env(tmp_path_factory.mktemp("search_env"))


def _ctx(env: tuple[Path, Path], out: Path, **budget: object):  # type: ignore[no-untyped-def]
    npz, model = env
    b = Budget(**budget)  # type: ignore[arg-type]
    cfg = SearchConfig(model=str(model), task=str(npz), device="cortex-m4", objectives=["accuracy", "flash"],
                       trials=2, budget=b.as_dict(), proxy_epochs=1, knobs=["structured", "quantize", "finetune"])
    return prepare_study(cfg, out, quiet=True)


def test_units_parse_and_reject_garbage() -> None:
    assert parse_size("256KB") == 256 * 1024
    assert parse_size("1.5MB") == int(1.5 * 1024**2)
    assert parse_size("4096") == 4096
    assert parse_ms("20ms") == 20.0 and parse_ms("0.5s") == 500.0 and parse_ms("300us") == pytest.approx(0.3)
    with pytest.raises(EdgeslimError, match="--max-flash '12 parsecs'"):
        parse_size("12 parsecs")


def test_budget_defaults_come_from_the_device() -> None:
    from edgeslim.devices import load_device

    dev = load_device("cortex-m4")
    b = make_budget(dev, None, "64KB", "20ms", None, 1.0)
    assert b.max_flash == dev.flash_bytes - dev.runtime_flash_bytes  # device flash minus the runtime's code
    assert b.max_ram == 64 * 1024 and b.max_latency == 20.0 and b.max_accuracy_drop == 1.0


def test_predictions_follow_ratios_and_bits(env: tuple[Path, Path], tmp_path: Path) -> None:
    ctx = _ctx(env, tmp_path)
    base = ctx.base
    dense = predict_footprint(base, {}, 1.0, 32, 32)
    assert dense.params == pytest.approx(base.params, rel=1e-6)  # no compression: the baseline's counts
    assert dense.flash_bytes == pytest.approx(base.onnx_bytes, rel=1e-6)
    q = predict_footprint(base, {}, 1.0, 8, 8)
    assert q.flash_bytes - base.overhead_bytes == pytest.approx((dense.flash_bytes - base.overhead_bytes) / 4)
    first = base.layers[0].name
    half = predict_footprint(base, {first: 0.5}, 1.0, 32, 32)
    assert half.macs < dense.macs and half.params < dense.params
    best = extreme_footprint(ctx.knobs, base)
    assert best.flash_bytes < q.flash_bytes < dense.flash_bytes


def test_infeasible_candidate_is_rejected_before_training(env: tuple[Path, Path], tmp_path: Path) -> None:
    ctx0 = _ctx(env, tmp_path / "a")
    best = extreme_footprint(ctx0.knobs, ctx0.base)
    limit = int((best.flash_bytes + ctx0.base.onnx_bytes / 4) / 2)  # reachable, but not by a float model
    ctx = _ctx(env, tmp_path / "b", max_flash=limit)
    study = optuna.create_study(directions=["maximize", "minimize"])
    dense = {ratio_param(n): 0.0 for n in [layer.name for layer in ctx.base.layers if not layer.last]}
    study.enqueue_trial({**dense, "weights": "fp32", "finetune_epochs": 2}, user_attrs={"slot": 0})
    trial = study.ask()
    run_trial(ctx, study, trial)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED
    assert "flash" in t.user_attrs["rejected"] and "before training" in t.user_attrs["rejected"]
    assert not (tmp_path / "b" / "trials").exists()  # nothing was trained or written


def test_feasible_trial_is_trained_and_measured(env: tuple[Path, Path], tmp_path: Path) -> None:
    ctx = _ctx(env, tmp_path, max_accuracy_drop=1.0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({"weights": "int8", "finetune_epochs": 2}, user_attrs={"slot": 0})
    run_trial(ctx, study, study.ask())
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE, t.user_attrs
    m = t.user_attrs["metrics"]
    assert m["flash_bytes"] < ctx.base_val["flash_bytes"] / 2  # INT8: the file shrinks
    assert t.values[1] == m["flash_bytes"] and t.values[0] == pytest.approx(100 * m["accuracy"])
    assert m["energy_method"].startswith("estimated") and m["energy_mj"] > 0
    assert (tmp_path / "trials" / "slot0000" / "results.json").exists()


def test_impossible_budget_names_the_limit_and_the_reachable_minimum(env: tuple[Path, Path], tmp_path: Path) -> None:
    npz, model = env
    p = cli("search", str(model), "--task", str(npz), "--trials", "2", "--out", str(tmp_path / "s"),
            "--max-flash", "1KB", *FAST, check=False)
    assert p.returncode == 1
    err = " ".join(p.stderr.split())
    assert "budget cannot be met" in err and "--max-flash 1.0 KB" in err
    assert "smallest model file the search space reaches is" in err
    assert err.count("error") == 1  # one line, no traceback
    assert not (tmp_path / "s" / "study.journal").exists()  # stopped before any trial


def test_pareto_front_and_hypervolume() -> None:
    vals = np.array([[90, 10], [95, 20], [85, 30], [95, 20], [80, 5]])  # accuracy max, cost min
    dirs = ["maximize", "minimize"]
    assert front_indices(vals, dirs) == [0, 1, 4]  # [85, 30] dominated; duplicate [95, 20] kept once
    # reference (0, 40): rectangles of the staircase, computed by hand
    hv = hypervolume(vals, dirs, [0, 40])
    assert hv == pytest.approx(95 * 20 + 90 * 10 + 80 * 5)
    assert hypervolume(vals[:0], dirs, [0, 40]) == 0.0


def test_cli_search_end_to_end(env: tuple[Path, Path], tmp_path: Path) -> None:
    npz, model = env
    out = tmp_path / "s"
    # 200 test samples: 1 point is 2 samples, so the test allows 3 points to stay deterministic enough
    p = cli("search", str(model), "--task", str(npz), "--trials", "4", "--out", str(out), "--max-flash", "48KB",
            "--max-accuracy-drop", "3", "--objectives", "accuracy,energy,flash", *FAST)
    assert "report:" in p.stdout
    s = json.loads((out / "search.json").read_text())
    assert sum(s["counts"].values()) == 4
    assert s["front"], "no feasible proxy trial"
    fits = [f for f in s["front"] if f["feasible"]]
    assert fits, [f["violations"] for f in s["front"]]
    base_val = s["baseline"]["val"]["accuracy"]
    for f in fits:  # the final measurement on the validation split meets the budget (picks read validation)
        assert f["val_metrics"]["accuracy_split"] == "val" and f["metrics"]["accuracy_split"] == "test"
        assert f["val_metrics"]["flash_bytes"] <= 48 * 1024
        assert 100 * (base_val - f["val_metrics"]["accuracy"]) <= 3.0 + 1e-9
    for f in s["front"]:  # and `feasible` means exactly that
        assert f["feasible"] == (f["val_metrics"]["flash_bytes"] <= 48 * 1024
                                 and 100 * (base_val - f["val_metrics"]["accuracy"]) <= 3.0 + 1e-9)
        assert f["values"][0] == pytest.approx(100 * f["val_metrics"]["accuracy"])
        assert f["test_values"][0] == pytest.approx(100 * f["metrics"]["accuracy"])
    # the best accuracy is the validation best among the feasible; its test figure is reported beside it
    b = s["best"]["accuracy"]
    assert b["picked_on"] == "val" and b["val"] == max(f["values"][0] for f in fits)
    assert b["test"] == pytest.approx(100 * next(f for f in fits if f["trial"] == b["trial"])["metrics"]["accuracy"])
    best = (out / "best_accuracy.yaml").read_text()
    assert "passes:" in best
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "http://" not in html and "https://" not in html
    # the best recipe reproduces with `edgeslim run`
    cli("run", str(out / "best_accuracy.yaml"), "--model", str(model), "--task", str(npz), "--out",
        str(tmp_path / "rerun"))
    res = json.loads((tmp_path / "rerun" / "results.json").read_text())
    chosen = next(f for f in s["front"] if f["trial"] == s["best"]["accuracy"]["trial"])
    # same recipe, same seed; INT8 picks its format by timing on the machine, so allow 2 samples' difference
    assert res["stages"][-1]["accuracy"] == pytest.approx(chosen["metrics"]["accuracy"], abs=0.011)
