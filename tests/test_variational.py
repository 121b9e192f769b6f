"""Sparse variational dropout (`variational_prune`), posterior bits + entropy coding (`posterior_code`), the
`.eshare` version-2 fields and the `bayesian-compression` recipe, on tiny models with few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import trained

import edgeslim
from edgeslim import api
from edgeslim.formats.eshare import MAGIC, load_shared, load_shared_model, save_shared
from edgeslim.passes.base import RunContext
from edgeslim.passes.posterior_code import PosteriorCode, posterior_code
from edgeslim.passes.variational_prune import VariationalPrune, variational_prune
from edgeslim.prune.masks import prunable
from edgeslim.prune.variational import K1, SparseVD, attach, detach, layer_sparsity, posterior_bits, total_kl
from edgeslim.train import Hooks, TrainConfig, evaluate, train_model

FT = TrainConfig(epochs=2, lr=1e-3)


def _ctx(tmp_path: Path, spec: dict, carry: dict | None = None) -> RunContext:
    return RunContext(stage_dir=tmp_path, spec=spec, finetune=FT, carry=dict(carry or {}), quiet=True)


def test_kl_matches_the_papers_limits() -> None:
    lin = torch.nn.Linear(4, 3)
    vd = SparseVD(lin)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        vd.log_sigma2.fill_(10.0 + 1e-3)  # log alpha at the clamp, 10: -KL -> k1 sigmoid(k2 + 14.9) - k1 ~ 0
    assert abs(float(vd.kl().detach())) < 12 * 1e-3
    with torch.no_grad():
        vd.log_sigma2.fill_(-10.0)  # log alpha = -10: KL ~ k1 + 0.5 * 10 (the log(1 + 1/alpha) term)
    assert float(vd.kl().detach()) == pytest.approx(12 * (K1 - K1 * float(torch.sigmoid(torch.tensor(1.8732 - 14.8695)))
                                                 + 0.5 * float(torch.nn.functional.softplus(torch.tensor(10.0))))
                                           , rel=1e-4)


def test_sparsity_rises_with_training(tiny_image_task) -> None:
    net, _ = trained("lenet300", tiny_image_task, 3, h1=24, h2=12)
    wrapped = attach(net)
    before = layer_sparsity(wrapped)
    n = len(tiny_image_task.x_train)
    hooks = Hooks(extra_losses=[lambda m, x, y, o: 20.0 * total_kl(wrapped) / n])
    train_model(net, tiny_image_task, TrainConfig(epochs=8, lr=1e-2, keep_best=False), hooks, quiet=True)
    after = layer_sparsity(wrapped)
    # log sigma^2 starts at -10: only weights under exp(-6.5) = 0.0015 in magnitude start past log alpha 3
    assert all(s < 0.1 for s in before.values()), before
    assert all(after[k] > before[k] + 0.3 for k in after), (before, after)
    net.eval()  # eval forward = theta with the dropped weights zeroed
    x = torch.from_numpy(tiny_image_task.x_val)
    masked = {k: w.theta * w.keep_mask() for k, w in wrapped.items()}
    assert masked["fc1"].eq(0).float().mean() >= after["fc1"] - 1e-4
    assert torch.isfinite(net(x)).all()


def test_conv_layers_learn_masks_and_detach_keeps_the_function(tiny_seq_task) -> None:
    net, _ = trained("cnn1d", tiny_seq_task, 2)
    wrapped = attach(net)
    assert {n for n in wrapped if n.startswith("features")} == {"features.1", "features.4", "features.7"}
    n = len(tiny_seq_task.x_train)
    hooks = Hooks(extra_losses=[lambda m, x, y, o: 20.0 * total_kl(wrapped) / n])
    train_model(net, tiny_seq_task, TrainConfig(epochs=4, lr=1e-2, keep_best=False), hooks, quiet=True)
    assert layer_sparsity(wrapped)["features.7"] > 0.3
    net.eval()
    x = torch.from_numpy(tiny_seq_task.x_val)
    with torch.no_grad():
        y_vd = net(x)
        detach(net, wrapped)  # plain Conv1d / Linear back, dropped weights zeroed
        y_plain = net(x)
    assert not any(isinstance(m, SparseVD) for m in net.modules())
    assert torch.allclose(y_vd, y_plain, atol=1e-6)
    assert float((net.features[7].weight == 0).float().mean()) > 0.3


def test_target_sparsity_drops_the_highest_log_alpha_first() -> None:
    from edgeslim.passes.variational_prune import _top_alpha_masks

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    wrapped = attach(net)
    with torch.no_grad():
        for w in wrapped.values():
            w.log_sigma2.normal_(-4, 2)  # log alpha spread around the threshold
    las = torch.cat([w.log_alpha().detach().flatten() for w in wrapped.values()])
    _top_alpha_masks(wrapped, 0.9)
    kept = torch.cat([w.keep_mask().flatten() for w in wrapped.values()])
    assert kept.sum() == round(0.1 * las.numel())
    assert float(las[kept].max()) <= float(las[~kept].min())  # the kept ones are the least noisy


def test_posterior_bits_rule() -> None:
    w = torch.tensor([0.0, -0.5, 0.5, 0.0, 0.25])
    sigma = torch.full_like(w, 1 / 16)  # range 1.0 over a step of 1/16: 16 levels, 4 bits
    assert posterior_bits(w, sigma) == 4
    assert posterior_bits(w, sigma, step_scale=2.0) == 3  # a coarser grid allowed: one bit fewer
    assert posterior_bits(w, sigma * 1e-6) == 8  # capped
    assert posterior_bits(torch.zeros(3), sigma[:3]) == 1  # an empty layer


def test_masks_kept_by_the_next_pass_and_unpacked_accuracy(tiny_image_task, tmp_path: Path) -> None:
    net, spec = trained("lenet300", tiny_image_task, 3, h1=24, h2=12)
    cfg = VariationalPrune(kl_weight=5.0, warmup=0.3, finetune=TrainConfig(epochs=8, lr=3e-3),
                           masked_finetune=TrainConfig(epochs=2, lr=1e-3))
    res = variational_prune(net, tiny_image_task, cfg, _ctx(tmp_path / "vp", spec))
    zeros = {n: (w.detach() == 0).clone() for n, w in prunable(net)}
    assert res.carry["keep_sparsity"] is True
    assert set(res.carry["posterior_bits"]) == {"fc1", "fc2", "fc3"}
    assert res.notes["weight_sparsity"] > 0.3
    # a later pass fine-tunes with the run's carry: every dropped weight stays exactly zero
    ctx = _ctx(tmp_path / "next", spec, res.carry)
    ctx.finetune_model(net, tiny_image_task, TrainConfig(epochs=2, lr=1e-2))
    for n, w in prunable(net):
        assert bool((w.detach()[zeros[n]] == 0).all()), n
    # posterior_code: bits from the carry, the stage's model is the unpacked file
    (tmp_path / "pc").mkdir()
    out = posterior_code(net, tiny_image_task, PosteriorCode(finetune=TrainConfig(epochs=1, lr=1e-4)),
                         _ctx(tmp_path / "pc", spec, res.carry))
    n = out.notes
    assert n["bits_source"] == "posterior"
    assert {k: v["bits"] for k, v in n["layers"].items()} == res.carry["posterior_bits"]
    assert all(v["clusters"] <= 2 ** v["bits"] for v in n["layers"].values())
    assert out.artifact is not None and n["file_bytes"] == out.artifact.stat().st_size
    assert n["compression"] == round(n["dense_fp32_bytes"] / n["file_bytes"], 2)
    for k, v in out.model.state_dict().items():  # still sparse where variational_prune dropped
        if k.endswith(".weight"):
            assert bool((v[zeros[k[: -len('.weight')]]] == 0).all())
    unpacked, _ = load_shared_model(out.artifact)
    t = tiny_image_task
    assert evaluate(unpacked, t.x_test, t.y_test) == evaluate(out.model, t.x_test, t.y_test)
    assert evaluate(unpacked, t.x_val, t.y_val) == n["val_accuracy"]


def test_eshare_v2_roundtrip_exact_and_v1_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    book = np.float16(rng.normal(0, 0.1, 8)).astype(np.float32)
    w = np.zeros((200, 1000), np.float32)
    pos = rng.choice(w.size, 300, replace=False)  # 0.15% kept: zero runs of ~670
    w.flat[pos] = book[rng.integers(0, 8, 300)]
    state = {"fc.weight": torch.from_numpy(w), "fc.bias": torch.from_numpy(rng.normal(size=200).astype(np.float32))}
    per: dict = {}
    a2 = save_shared(tmp_path / "v2.eshare", state, None, ["fc.weight"], "auto", half_codebooks=True, per_tensor=per)
    a1 = save_shared(tmp_path / "v1.eshare", state, None, ["fc.weight"], 5)
    raw2, raw1 = (tmp_path / "v2.eshare").read_bytes(), (tmp_path / "v1.eshare").read_bytes()
    assert raw2[:4] == raw1[:4] == MAGIC and raw2[4] == 2 and raw1[4] == 1  # old layout stays version 1
    assert per["fc.weight"]["gap_bits"] > 5 and per["fc.weight"]["codebook_bytes"] == 2 * 8
    assert a2["file_bytes"] < a1["file_bytes"]
    for f in ("v1.eshare", "v2.eshare"):
        back = load_shared(tmp_path / f)
        assert all(torch.equal(back[k], state[k]) for k in state)
    bad = bytearray(raw2)
    bad[4] = 3
    (tmp_path / "v3.eshare").write_bytes(bytes(bad))
    with pytest.raises(edgeslim.errors.EdgeslimError, match="version 3"):
        load_shared(tmp_path / "v3.eshare")


def test_recipe_end_to_end_and_unpack(tiny_image_task, tmp_path: Path) -> None:
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import load_recipe, parse_recipe

    trained("lenet300", tiny_image_task, 3, tmp_path / "base", h1=24, h2=12)
    path = Path(edgeslim.__file__).parent / "recipes" / "bayesian-compression.yaml"
    load_recipe(path)  # the shipped recipe parses
    small = ("version: 1\nfinetune: {epochs: 1, lr: 0.001}\npasses:\n"
             "  - variational_prune: {kl_weight: 20.0, finetune: {epochs: 6, lr: 0.01}}\n"
             "  - posterior_code: {finetune: {epochs: 1, lr: 0.0001}}\n")
    res = run_recipe(parse_recipe(small), tmp_path / "base", tiny_image_task, tmp_path / "run", quiet=True)
    last = res["stages"][-1]
    eshare = tmp_path / "run" / "stages" / "02_posterior_code" / "model.eshare"
    assert last["size_bytes"] == eshare.stat().st_size
    assert last["notes"]["bits_per_weight"].keys() == {"fc1", "fc2", "fc3"}
    assert res["stages"][1]["notes"]["weight_sparsity"] > 0.3
    assert last["nonzero_params"] < res["stages"][0]["nonzero_params"] * 0.8
    r = api.unpack(eshare, tmp_path / "unpacked")
    model = edgeslim.models.load_model(Path(r["out"]))[0]
    t = tiny_image_task
    assert evaluate(model, t.x_test, t.y_test) == pytest.approx(last["accuracy"], abs=1e-9)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["stages"][-1]["notes"]["roundtrip_exact"]
    # a run killed during posterior_code resumes from variational_prune's stage (masks and bits in its carry)
    first = eshare.read_bytes()
    shutil.rmtree(eshare.parent)
    again = run_recipe(parse_recipe(small), tmp_path / "base", tiny_image_task, tmp_path / "run", quiet=True)
    assert again["stages"][1]["seconds"] == res["stages"][1]["seconds"]  # not re-run
    assert eshare.read_bytes() == first


def test_distill_learns_from_the_baseline_here_and_in_later_fine_tuning(tiny_image_task, tmp_path: Path) -> None:
    import copy

    net, spec = trained("lenet300", tiny_image_task, 3, h1=24, h2=12)
    plain = copy.deepcopy(net)
    teacher = copy.deepcopy(net).eval()
    seen: list[int] = []
    teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))

    def ctx(d: str, carry: dict | None = None) -> RunContext:
        return RunContext(stage_dir=tmp_path / d, spec=spec, finetune=FT, carry=dict(carry or {}), quiet=True,
                          teacher_loader=lambda: teacher)

    kw = dict(kl_weight=5.0, finetune=TrainConfig(epochs=3, lr=3e-3), masked_finetune=TrainConfig(epochs=1, lr=1e-3))
    res = variational_prune(net, tiny_image_task, VariationalPrune(**kw, distill={"temperature": 2.0}), ctx("a"))
    n = len(tiny_image_task.x_train)
    assert sum(seen) >= n  # the teacher labelled every training sample
    kd = res.carry["distill"]
    assert (kd["temperature"], kd["alpha"], kd["teachers"]) == (2.0, 0.7, [])
    ref = variational_prune(plain, tiny_image_task, VariationalPrune(**kw), ctx("b"))
    assert "distill" not in ref.carry
    assert not torch.equal(net.fc1.weight, plain.fc1.weight)  # a different loss, different weights
    seen.clear()
    ctx("c", res.carry).finetune_model(net, tiny_image_task, TrainConfig(epochs=1, lr=1e-3))  # e.g. posterior_code
    assert sum(seen) >= n  # later passes distil too
