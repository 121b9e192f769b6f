"""Low-rank factorisation: SVD reconstruction, conv decompositions, rank rules, MAC check, replay."""

from __future__ import annotations

import pytest
import torch
from conftest import trained
from torch import nn

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import count_macs
from edgeslim.passes.lowrank import (
    LowRank,
    energy_rank,
    factorise,
    spatial_conv,
    svd_linear,
    tucker2_conv,
)


def test_svd_full_rank_reconstructs_linear_exactly():
    torch.manual_seed(0)
    lin = nn.Linear(20, 12)
    seq = svd_linear(lin, 12)
    x = torch.randn(7, 20)
    assert torch.allclose(seq(x), lin(x), atol=1e-5)
    assert seq[0].weight.shape == (12, 20) and seq[1].weight.shape == (12, 12)


def test_truncated_svd_error_is_the_dropped_singular_values():
    torch.manual_seed(1)
    lin = nn.Linear(30, 16, bias=False)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    seq = svd_linear(lin, 5)
    w_hat = (seq[1].weight @ seq[0].weight).double()
    err = torch.linalg.matrix_norm(lin.weight.detach().double() - w_hat)  # Frobenius (Eckart-Young)
    assert err.item() == pytest.approx(float((s[5:] ** 2).sum().sqrt()), rel=1e-4)


def test_energy_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(s, 0.6) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 1.0) == 3


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_decompositions_exact_at_full_rank(stride, padding):
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride, padding)
    x = torch.randn(2, 4, 9, 9)
    sp = spatial_conv(conv, 12)  # full rank of the (C*kh) x (N*kw) = 12 x 18 matrix
    assert [m.kernel_size for m in sp] == [(3, 1), (1, 3)]
    assert torch.allclose(sp(x), conv(x), atol=1e-5)
    tk = tucker2_conv(conv, 4, 6)
    assert [m.kernel_size for m in tk] == [(1, 1), (3, 3), (1, 1)]
    assert torch.allclose(tk(x), conv(x), atol=1e-5)
    c1 = nn.Conv1d(4, 6, 5, stride, 2)
    x1 = torch.randn(2, 4, 17)
    assert torch.allclose(tucker2_conv(c1, 4, 6)(x1), c1(x1), atol=1e-5)


def test_factorise_replays_from_spec(tmp_path):
    torch.manual_seed(3)
    spec = models.make_spec("lenet300", (1, 8, 8), 10)
    net = models.build_model(spec).eval()
    macs0 = count_macs(net, (1, 8, 8))
    new_spec, rows = factorise(net, spec, (1, 8, 8), LowRank(compression=3.0))
    done = {r["layer"]: r for r in rows if "skipped" not in r}
    assert set(done) == {"fc1", "fc2", "fc3"}
    assert done["fc1"]["rank"] == 19200 // (3 * 364)  # in*out / (compression * (in + out))
    assert count_macs(net, (1, 8, 8)) * 2 < macs0
    assert [e["edit"] for e in new_spec["edits"]] == ["lowrank_linear"] * 3
    models.save_model(tmp_path, net, new_spec)
    back, _ = models.load_model(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(back(x), net(x), atol=1e-6)


def test_only_factorises_where_macs_drop():
    spec = models.make_spec("lenet300", (1, 8, 8), 10)
    net = models.build_model(spec)
    _, rows = factorise(net, spec, (1, 8, 8), LowRank(energy=1.0))
    assert all("skipped" in r and "MACs" in r["skipped"] for r in rows)  # full rank never pays
    assert all(isinstance(m, nn.Linear) for m in (net.fc1, net.fc2, net.fc3))


def test_conv_model_tucker_and_spatial_skip_rules(tmp_path):
    torch.manual_seed(4)
    spec = models.make_spec("resnet8", (1, 16, 16), 10, width=16)
    net = models.build_model(spec).eval()
    new_spec, rows = factorise(net, spec, (1, 16, 16), LowRank(compression=3.0, conv_mode="tucker2"))
    kinds = {r["layer"]: r.get("skipped", "done") for r in rows}
    assert kinds["layer2.shortcut"] == "1x1 conv"
    assert kinds["layer3.conv2"] == "done"
    models.save_model(tmp_path, net, new_spec)
    back, _ = models.load_model(tmp_path)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(back(x), net(x), atol=1e-5)
    net2 = models.build_model(spec).eval()
    _, rows2 = factorise(net2, spec, (1, 16, 16), LowRank(compression=2.0, conv_mode="spatial"))
    assert any(r["layer"] == "layer3.conv2" and "skipped" not in r for r in rows2)


def test_lowrank_config_and_errors():
    with pytest.raises(ValueError):
        LowRank(energy=0.9, compression=2.0)
    net = models.build_model(models.make_spec("lenet300", (1, 8, 8), 10))
    with pytest.raises(EdgeslimError, match="no layer"):
        factorise(net, {}, (1, 8, 8), LowRank(layers=["nope"]))


def test_lowrank_pass_in_pipeline(tmp_path, tiny_image_task):
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    trained("lenet300", tiny_image_task, 5, tmp_path / "base", h1=64, h2=32)
    r = parse_recipe("version: 1\nfinetune: {epochs: 2}\npasses:\n  - lowrank: {compression: 3.0, skip: [fc3]}\n")
    res = run_recipe(r, tmp_path / "base", tiny_image_task, tmp_path / "run", quiet=True)
    base, lr = res["stages"]
    assert lr["macs"] < base["macs"] / 2
    assert lr["notes"]["mac_reduction"] > 2
    assert lr["accuracy"] >= base["accuracy"] - 0.1
