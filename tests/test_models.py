"""Zoo counts against the published references, input adaptation, and safetensors round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import count_macs, count_params
from edgeslim.models.spec import add_edit, resize_to_state_dict
from edgeslim.models.zoo import ZOO


def test_resnet8_matches_mlperf_tiny_reference():
    net = ZOO["resnet8"].build((3, 32, 32), 10)
    params, _ = count_params(net)
    assert 77_000 <= params <= 79_000  # MLPerf Tiny: ~78k parameters
    assert abs(count_macs(net, (3, 32, 32)) - 12.5e6) / 12.5e6 < 0.01  # 12.5M MACs


def test_lenet_reference_counts():
    assert count_params(ZOO["lenet300"].build((1, 28, 28), 10))[0] == 266_610
    assert count_params(ZOO["lenet5"].build((1, 28, 28), 10))[0] == 61_706


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40), (12,)])
def test_every_model_adapts_to_input(name, shape):
    net = ZOO[name].build(shape, 5).eval()
    out = net(torch.rand(2, *shape))
    expect = (2, *shape) if name == "autoencoder" else (2, 5)
    assert tuple(out.shape) == expect


def test_roundtrip_exact(tmp_path):
    spec = models.make_spec("resnet8", (1, 8, 8), 10)
    net = models.build_model(spec).eval()
    models.save_model(tmp_path / "m", net, spec)
    back, spec2 = models.load_model(tmp_path / "m")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(net(x), back(x))
    assert spec2["arch"] == "resnet8"


def test_roundtrip_after_channel_change(tmp_path):
    """Structured pruning changes widths; loading resizes layers from the stored tensor shapes."""
    spec = models.make_spec("lenet300", (1, 8, 8), 10)
    net = models.build_model(spec)
    net.fc1 = nn.Linear(64, 50)
    net.fc2 = nn.Linear(50, 100)
    models.save_model(tmp_path / "m", net.eval(), spec)
    back, _ = models.load_model(tmp_path / "m")
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(net(x), back(x))


def test_fit_depthwise():
    net = ZOO["dscnn"].build((1, 16, 16), 4)
    state = {k: v for k, v in net.state_dict().items()}
    dw = net.blocks[0][0]
    state["blocks.0.0.weight"] = torch.zeros(32, 1, 3, 3)
    resize_to_state_dict(net, state)
    assert net.blocks[0][0].groups == 32 and net.blocks[0][0].in_channels == 32
    assert dw is not net.blocks[0][0]


def test_identity_edit_replayed(tmp_path):
    spec = models.make_spec("resnet8", (1, 8, 8), 3)
    net = models.build_model(spec)
    net.layer1 = nn.Identity()
    spec = add_edit(spec, "identity", module="layer1")
    models.save_model(tmp_path / "m", net.eval(), spec)
    back, _ = models.load_model(tmp_path / "m")
    assert isinstance(back.layer1, nn.Identity)


def test_pickle_refused_without_trust(tmp_path):
    p = tmp_path / "m.pt"
    torch.save(nn.Linear(2, 2), p)
    with pytest.raises(EdgeslimError, match="--trust-pickle"):
        models.load_model(p)
    net, _ = models.load_model(p, trust_pickle=True)
    assert isinstance(net, nn.Linear)


def test_corrupt_weights(tmp_path):
    spec = models.make_spec("lenet300", (4,), 2)
    models.save_model(tmp_path / "m", models.build_model(spec), spec)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(EdgeslimError, match="unreadable safetensors"):
        models.load_model(tmp_path / "m")


def test_unknown_arch():
    with pytest.raises(EdgeslimError, match="unknown model 'vgg'.*lenet300"):
        models.make_spec("vgg", (1, 8, 8), 10)


def test_dscnn_matches_mlperf_tiny_reference():
    net = ZOO["dscnn"].build((1, 49, 10), 12)
    assert tuple(net.stem(torch.zeros(1, 1, 49, 10)).shape) == (1, 64, 25, 5)  # 'same' padding, stride 2
    assert abs(count_macs(net, (1, 49, 10)) - 2.66e6) / 2.66e6 < 0.01
