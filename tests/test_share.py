"""Weight sharing: k-means, centroid fine-tuning, Huffman coding, storage arithmetic, exact reload."""

from __future__ import annotations

import math
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import trained
from torch import nn

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.formats.eshare import MAGIC, _gaps, load_shared, load_shared_model, save_shared
from edgeslim.formats.huffman import canonical_codes, decode, encode, huffman_lengths
from edgeslim.quant.codebook import kmeans_1d
from edgeslim.quant.sharing import cluster_layer, unshare
from edgeslim.train import evaluate


def test_kmeans_1d_finds_clusters():
    rng = np.random.default_rng(0)
    v = np.concatenate([np.full(50, -1.0), np.full(30, 0.5), np.full(20, 2.0)]) + 0.01 * rng.standard_normal(100)
    for init in ("linear", "density", "random"):
        c, a = kmeans_1d(v, 3, init=init, tol=0.0)
        assert np.allclose(c, [-1.0, 0.5, 2.0], atol=0.02), init
        assert Counter(a.tolist()) == {0: 50, 1: 30, 2: 20}
    c2, _ = kmeans_1d(np.array([1.0, 1.0, 2.0]), 16)  # fewer distinct values than clusters
    assert len(c2) == 2


def test_huffman_optimal_lengths_and_roundtrip():
    freqs = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}  # the textbook example: lengths 1,3,3,3,4,4
    lengths = huffman_lengths(freqs)
    assert sum(freqs[s] * n for s, n in lengths.items()) == 224
    codes = canonical_codes(lengths)
    assert all(not b.startswith(a) for a in codes.values() for b in codes.values() if a != b)  # prefix-free
    syms = [s for s, f in freqs.items() for _ in range(f)]
    np.random.default_rng(0).shuffle(syms)
    data, n = encode(syms, codes)
    assert n == 224 and len(data) == 28
    assert decode(data, n, codes) == syms
    assert huffman_lengths({7: 10}) == {7: 1}


def test_gap_coding_with_filler():
    pos = np.array([0, 3, 40, 41])
    assert _gaps(pos, 31) == [0, 2, 31, 5, 0]  # 36 zeros before 40: one filler (31) + 5


def _shared_state(seed=0):
    torch.manual_seed(seed)
    w = torch.randn(40, 30)
    w[torch.rand(40, 30) < 0.9] = 0  # ~90% sparse
    book = torch.tensor([-0.5, -0.1, 0.2, 0.7])
    w[w != 0] = book[torch.randint(0, 4, (int((w != 0).sum()),))]
    return {"fc.weight": w, "fc.bias": torch.randn(40), "bn.num_batches_tracked": torch.tensor(3)}


def test_storage_arithmetic_and_exact_roundtrip(tmp_path):
    state = _shared_state()
    path = tmp_path / "m.eshare"
    acct = save_shared(path, state, None, ["fc.weight"], gap_bits=5)
    size = path.stat().st_size
    assert acct["file_bytes"] == size
    parts = ["codebook_bytes", "index_bytes", "position_bytes", "table_bytes", "raw_bytes", "header_bytes"]
    assert sum(acct[p] for p in parts) == size
    assert acct["codebook_bytes"] == 4 * 4  # four fp32 centroids
    assert acct["raw_bytes"] == 40 * 4 + 8  # fp32 bias + int64 counter
    assert acct["table_bytes"] == 4 + 32 + 8  # code lengths of 4 indices and 32 gap symbols + 2 bit counts
    w = state["fc.weight"]
    nz = int((w != 0).sum())
    idx_bits = 8 * acct["index_bytes"]
    assert idx_bits <= nz * 2 + 7  # four roughly equiprobable values: <= 2 bits each
    back = load_shared(path)
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k])
    fixed = save_shared(tmp_path / "f.eshare", state, None, ["fc.weight"], huffman=False)
    assert fixed["index_bytes"] == math.ceil(nz * 2 / 8)  # fixed 2-bit indices
    assert load_shared(tmp_path / "f.eshare")["fc.weight"].equal(w)


def test_dense_layer_and_fp16_exact_raw(tmp_path):
    state = {"w": torch.tensor([[0.5, -0.25], [0.5, 0.5]]), "b": torch.tensor([0.5, 1.0 / 3.0]),
             "h": torch.tensor([0.125, -2.0])}
    acct = save_shared(tmp_path / "d.eshare", state, None, ["w"])
    assert acct["position_bytes"] == 0  # no zeros: no position stream
    assert acct["raw_bytes"] == 8 + 4  # b needs fp32; h is exactly fp16, stored in 2 bytes each
    back = load_shared(tmp_path / "d.eshare")
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == torch.float32 for k in state)


def test_refuses_unclustered_layers_and_corrupt_files(tmp_path):
    with pytest.raises(EdgeslimError, match="weight_share"):
        save_shared(tmp_path / "x.eshare", {"w": torch.randn(30, 30)}, None, ["w"])
    (tmp_path / "bad.eshare").write_bytes(b"nope")
    with pytest.raises(EdgeslimError, match="magic"):
        load_shared(tmp_path / "bad.eshare")
    good = tmp_path / "g.eshare"
    save_shared(good, _shared_state(), None, ["fc.weight"])
    data = good.read_bytes()
    assert data[:4] == MAGIC and struct.unpack("<B", data[4:5])[0] == 1
    (tmp_path / "t.eshare").write_bytes(data[: len(data) - 200])
    with pytest.raises(EdgeslimError):
        load_shared(tmp_path / "t.eshare")


def test_cluster_layer_centroid_finetuning_keeps_sharing_and_zeros():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    with torch.no_grad():
        lin.weight[:, :5] = 0
    cluster_layer(lin, bits=3)
    params = [p for p in lin.parameters()]
    assert any(p.numel() == 8 for p in params)  # the codebook is what trains
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        lin(torch.randn(16, 20)).pow(2).mean().backward()
        opt.step()
    unshare(lin)
    w = lin.weight.detach()
    assert isinstance(lin.weight, nn.Parameter)
    assert (w[:, :5] == 0).all()
    assert len(w[w != 0].unique()) <= 8


def test_deep_compression_pipeline_and_reload_accuracy(tmp_path, tiny_image_task):
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    t = tiny_image_task
    trained("lenet300", t, 6, tmp_path / "base", h1=64, h2=32)
    r = parse_recipe("""
version: 1
finetune: {epochs: 3, lr: 0.001}
passes:
  - magnitude_prune: {sparsity: 0.8}
  - weight_share: {bits: 4, fp16_rest: true}
  - entropy_code: {gap_bits: 4}
""")
    res = run_recipe(r, tmp_path / "base", t, tmp_path / "run", quiet=True)
    last = res["stages"][-1]
    folder = tmp_path / "run" / "stages" / "03_entropy_code"
    assert last["size_bytes"] == (folder / "model.eshare").stat().st_size
    n = last["notes"]
    assert n["roundtrip_exact"] and n["compression"] > 10
    assert n["compression"] == pytest.approx(n["dense_fp32_bytes"] / last["size_bytes"], rel=1e-3)
    model, spec2 = load_shared_model(folder / "model.eshare")
    staged, _ = models.load_model(folder)
    acc = evaluate(model, t.x_test, t.y_test)
    assert acc == evaluate(staged, t.x_test, t.y_test)
    assert abs(acc - last["accuracy"]) < 1e-6  # same accuracy as the stage measured in ONNX Runtime
    for name, w in staged.state_dict().items():
        assert torch.equal(model.state_dict()[name], w)
    ws = res["stages"][2]["notes"]["layers"]
    assert all(v["clusters"] <= 16 for v in ws.values())
