"""`export --min-arena`: operator order and patch-based first stage in a stock `.tflite`, proven in TFLite Micro.

Needs the `litert` extra (skips without it)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.litert import INSTALL_HINT, litert_available

pytestmark = pytest.mark.skipif(not litert_available(), reason=INSTALL_HINT)


def _int8(module: nn.Module, shape: tuple[int, ...], path: Path) -> bytes:
    from edgeslim.litert.convert import to_tflite
    from edgeslim.litert.options import ExportOptions

    torch.manual_seed(0)
    calib = np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)
    to_tflite(module.eval(), shape, path, ExportOptions(int8=True), calib=calib)
    return path.read_bytes()


def _outputs(data: bytes, n: int = 6) -> tuple[list[np.ndarray], object]:
    from edgeslim.litert.micro import MicroModel

    mm = MicroModel(data)
    x = np.random.default_rng(1).integers(-128, 128, size=(n, *mm.in_shape[1:])).astype(np.int8)
    return [mm.invoke_raw(x[i : i + 1]) for i in range(n)], mm


class TwoBranches(nn.Module):
    """Two branches, each widening 4 -> 32 channels then back to 4, summed: running them interleaved keeps
    both 32-channel tensors alive; one branch after the other keeps one."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Conv2d(4, 32, 1), nn.Conv2d(32, 4, 1)
        self.b1, self.b2 = nn.Conv2d(4, 32, 1), nn.Conv2d(32, 4, 1)
        self.out = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.out(self.a2(torch.relu(self.a1(x))) + self.b2(torch.relu(self.b1(x))))


def _topo_orders(model) -> list[list[int]]:
    from edgeslim.litert import tfgraph as tg

    sg = model.subgraphs[0]
    prod = {int(t): i for i, op in enumerate(sg.operators) for t in op.outputs}
    deps = [{prod[t] for t in tg.activations(model, sg, op.inputs) if t in prod} for op in sg.operators]
    return [list(p) for p in itertools.permutations(range(len(deps)))
            if all(deps[v] <= set(p[:i]) for i, v in enumerate(p))]


def test_reorder_finds_the_best_order_of_a_small_graph(tmp_path):
    from edgeslim.litert import tfgraph as tg
    from edgeslim.litert.micro import tflm_arena
    from edgeslim.litert.min_arena import reorder

    data = _int8(TwoBranches(), (4, 8, 8), tmp_path / "b.tflite")
    model = tg.load(data)
    sg = model.subgraphs[0]
    names = [tg.op_name(model, op) for op in sg.operators]
    assert names.count("CONV_2D") == 5 and "ADD" in names
    # the worst order (both 32-channel tensors alive together) written into the file
    orders = _topo_orders(model)
    heads = {tuple(o): tg.plan(model, o).head_bytes for o in orders}
    worst, best = max(heads.values()), min(heads.values())
    assert worst > best  # the order matters on this graph
    bad = [o for o in orders if heads[tuple(o)] == worst][0]
    sg.operators = [sg.operators[i] for i in bad]
    bad_bytes = tg.dump(model)
    assert tflm_arena(bad_bytes).head_bytes == worst  # TFLite Micro plans it as edgeslim does
    fixed, method = reorder(tg.load(bad_bytes))
    assert method and tg.plan(fixed).head_bytes == best
    fixed_bytes = tg.dump(fixed)
    assert tflm_arena(fixed_bytes).head_bytes == best  # recorded by TFLite Micro, not recomputed
    ref, _ = _outputs(bad_bytes)
    got, _ = _outputs(fixed_bytes)
    assert all(np.array_equal(a, b) for a, b in zip(ref, got))


class SmallCNN(nn.Module):
    """A strided 3x3 stem, a depthwise-separable block with a residual ADD, a stride-2 conv, then the head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = self.stem(x)
        y = self.down(torch.relu(y + self.dw(y)))
        return self.fc(y.mean((2, 3)))


def test_patch_split_outputs_equal_plain_in_tflite_micro(tmp_path):
    from edgeslim.litert import tfgraph as tg
    from edgeslim.litert.patches import patch_stage, stage_cuts

    data = _int8(SmallCNN(), (3, 20, 20), tmp_path / "s.tflite")
    model = tg.load(data)
    cuts = stage_cuts(model)
    assert len(cuts) >= 3
    ref, plain = _outputs(data)
    checked = 0
    for (k, boundary), grid in itertools.product([cuts[0], cuts[len(cuts) // 2], cuts[-1]], [(2, 2), (3, 1), (1, 4)]):
        new = patch_stage(model, k, boundary, grid)
        names = [tg.op_name(new, op) for op in new.subgraphs[0].operators]
        assert "CONCATENATION" in names and "STRIDED_SLICE" in names
        b = tg.dump(new)
        got, mm = _outputs(b)
        assert all(np.array_equal(x, y) for x, y in zip(ref, got)), (k, grid)
        rec = mm.arena()
        assert rec.head_bytes == tg.plan(new).head_bytes  # edgeslim's plan of the patched file is TFLite Micro's
        assert abs(tg.tail_estimate(new) - rec.tail_bytes) <= 0.05 * rec.tail_bytes
        checked += 1
    assert checked == 9 and plain.arena().head_bytes == tg.plan(model).head_bytes


def test_minimise_lowers_the_recorded_arena_within_the_recompute_budget(tmp_path):
    from edgeslim.litert.min_arena import minimise, prove

    data = _int8(SmallCNN(), (3, 32, 32), tmp_path / "s.tflite")
    new, rep = minimise(data, max_recompute=0.2)
    assert rep["applied"] and rep["patch_grid"] and rep["recompute_fraction"] <= 0.2
    assert rep["macs"] - rep["macs_plain"] == rep["macs_added"] > 0
    none, rep0 = minimise(data, max_recompute=0.0)  # no halo allowed: only a patch grid without recompute
    assert rep0["recompute_fraction"] == 0.0
    x = np.random.default_rng(2).integers(-128, 128, size=(8, 1, 3, 32, 32)).astype(np.int8)
    proof = prove(data, new, x)
    assert proof["outputs_identical"] and proof["compared_samples"] == 8
    assert proof["tflm_arena"]["total_bytes"] < proof["tflm_arena_plain"]["total_bytes"]
    assert proof["tflm_arena"]["head_bytes"] == rep["planned_head_bytes"]
    assert abs(rep["planned_arena_bytes"] / proof["tflm_arena"]["total_bytes"] - 1) < 0.05  # the planner agrees


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def resnet8_folder(tmp_path_factory) -> tuple[Path, Path]:
    from edgeslim import api
    from edgeslim.train import TrainConfig

    d = tmp_path_factory.mktemp("ma")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 96)
    x = rng.normal(0, 0.3, (96, 3, 32, 32)).astype(np.float32)
    x[np.arange(96), y % 3, :16, :16] += 1.0  # a learnable class: which channel's top-left corner is bright
    npz = d / "corner.npz"
    np.savez(npz, x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    api.train("resnet8", str(npz), d / "r8", TrainConfig(epochs=1), quiet=True)
    return d / "r8", npz


def test_export_min_arena_cli_proves_in_tflite_micro(resnet8_folder, tmp_path):
    from edgeslim.litert.micro import tflm_arena

    folder, npz = resnet8_folder
    out = tmp_path / "r8.tflite"
    r = _cli("export", str(folder), "--format", "tflite", "--int8", "--min-arena", "--task", str(npz),
             "--calibration-samples", "32", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["min_arena"]
    plain = Path(m["plain_path"])
    assert plain.is_file() and out.with_suffix(".skyline.png").stat().st_size > 1000
    # the arenas are TFLite Micro's recording allocator's, for the two files on disk
    assert m["tflm_arena"] == tflm_arena(out).as_dict() and m["tflm_arena_plain"] == tflm_arena(plain).as_dict()
    assert m["tflm_arena"]["total_bytes"] < m["tflm_arena_plain"]["total_bytes"]
    assert m["outputs_identical"] and m["compared_samples"] == 32 and m["accuracy"] == m["accuracy_plain"]
    assert m["recompute_fraction"] <= 0.2 and abs(m["planner_vs_tflm"]) < 0.05
    assert m["latency_ms"] >= m["latency_ms_plain"] > 0 and "estimated" in m["latency_source"]
    r = _cli("export", str(folder), "--format", "onnx", "--min-arena", "-o", str(tmp_path / "x.onnx"))
    assert r.returncode == 1 and "--min-arena" in r.stderr and "Traceback" not in r.stderr
    r = _cli("export", str(folder), "--format", "tflite", "--min-arena", "--max-recompute", "lots",
             "-o", str(tmp_path / "y.tflite"))
    assert r.returncode == 1 and "--max-recompute" in r.stderr and not (tmp_path / "y.tflite").exists()


def test_fit_says_a_model_missing_64kb_fits_after_min_arena(tmp_path):
    import yaml

    from edgeslim.litert.micro import tflm_arena
    from edgeslim.models.zoo import ZOO

    path = tmp_path / "r8.tflite"
    data = _int8(ZOO["resnet8"].build((3, 32, 32), 10), (3, 32, 32), path)
    runtime = 65536 - tflm_arena(data).total_bytes + 2048  # plain misses 64 KB by 2 KB
    dev = tmp_path / "m4-64k.yaml"
    dev.write_text(yaml.safe_dump({
        "name": "m4-64k", "kind": "mcu", "clock_mhz": 80, "flash_bytes": 1 << 20, "sram_bytes": 65536,
        "runtime_flash_bytes": 60_000, "runtime_ram_bytes": runtime, "peak_macs_per_cycle": {"int8": 2.0, "fp32": 0.5},
        "active_power_mw": 30}))
    r = _cli("fit", str(path), "--device", str(dev), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["fits_ram"] is False and res["ram_bytes"] == 65536 + 2048
    m = res["min_arena"]
    assert m["fits_ram"] and m["ram_bytes"] == m["arena_bytes"] + runtime <= 65536 and not m["fits_ram_plain"]
    assert m["saves_bytes"] == m["arena_bytes_plain"] - m["arena_bytes"] > 2048 and m["recompute_fraction"] <= 0.2
    assert m["arena_bytes_plain"] == res["arena_bytes"] and m["arena_source"].startswith("recorded:tflite-micro")
    r = _cli("fit", str(path), "--device", str(dev))
    assert r.returncode == 0 and "with --min-arena" in r.stdout
    after = r.stdout.split("with --min-arena")[1]
    assert "fits" in after and "does not fit" not in after.split("(")[0]


def test_offline_plan_in_place_add_is_what_tflite_micro_uses(tmp_path):
    from edgeslim.litert import offline
    from edgeslim.litert import tfgraph as tg

    data = _int8(SmallCNN(), (3, 24, 24), tmp_path / "s.tflite")
    model = tg.load(data)
    alias = offline._aliases(model)
    assert len(alias) == 1  # the residual ADD writes over the block's dying output
    new, head, wrote = offline.apply(model)
    assert wrote and head < tg.plan(model).head_bytes
    b = tg.dump(new)
    ref, _ = _outputs(data)
    got, mm = _outputs(b)
    assert all(np.array_equal(x, y) for x, y in zip(ref, got))
    assert mm.arena().head_bytes == head  # TFLite Micro placed the tensors where the metadata says


def test_tflite_stage_min_arena_option_in_a_recipe(resnet8_folder, tmp_path):
    from edgeslim.data import load_task
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    folder, npz = resnet8_folder
    recipe = "version: 1\npasses:\n  - tflite: {int8: true, calibration_samples: 32, min_arena: true}\n"
    run_recipe(parse_recipe(recipe), folder, load_task(str(npz)), tmp_path / "run", quiet=True)
    st = json.loads((tmp_path / "run" / "results.json").read_text())["stages"][-1]
    m = st["notes"]["min_arena"] if "notes" in st and "min_arena" in st["notes"] else st["min_arena"]
    stage_dir = (tmp_path / "run" / st["tflite"]).parent
    assert (stage_dir / m["plain_path"]).is_file() and (stage_dir / m["skyline_png"]).is_file()
    assert st["tflm_arena_bytes"] == m["tflm_arena"]["total_bytes"] < m["tflm_arena_plain"]["total_bytes"]
    assert m["outputs_identical"] and st["tflm_arena_plain_bytes"] == m["tflm_arena_plain"]["total_bytes"]
    assert "(plain " in (tmp_path / "run" / "report.md").read_text()  # both recorded arenas in the report


def test_offline_plan_reshape_shares_its_input(tmp_path):
    from edgeslim.litert import offline
    from edgeslim.litert import tfgraph as tg

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 8 * 8, 5))
    data = _int8(net, (3, 8, 8), tmp_path / "f.tflite")
    model = tg.load(data)
    sg = model.subgraphs[0]
    shared = {tg.op_name(model, op) for op in sg.operators if str(op.outputs[0]) in offline._aliases(model)}
    assert "RESHAPE" in shared or "TRANSPOSE" in {tg.op_name(model, op) for op in sg.operators}
    new, head, wrote = offline.apply(model)
    ref, _ = _outputs(data)
    got, mm = _outputs(tg.dump(new))
    assert all(np.array_equal(x, y) for x, y in zip(ref, got))
    assert mm.arena().head_bytes == head <= tg.plan(model).head_bytes
