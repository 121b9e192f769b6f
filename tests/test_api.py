"""The Python API: one pass on an in-memory model chosen by its config type (`api.compress`), and the
listing and report jobs the CLI prints."""

from __future__ import annotations

import pytest
from conftest import trained

from edgeslim import api
from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.session import onnx_accuracy
from edgeslim.passes import PassConfig
from edgeslim.passes.magnitude_prune import MagnitudePrune
from edgeslim.passes.quantize_int8 import QuantizeInt8
from edgeslim.passes.structured_prune import StructuredPrune
from edgeslim.prune.masks import weight_sparsity
from edgeslim.train import TrainConfig, evaluate


@pytest.fixture(scope="module")
def net(tiny_image_task):
    return trained("lenet5", tiny_image_task, epochs=4)


def test_compress_torch_pass_by_config_type(net, tiny_image_task, tmp_path):
    model, spec = net
    res = api.compress(model, MagnitudePrune(sparsity=0.6), tiny_image_task, spec=spec,
                       finetune=TrainConfig(epochs=1), work_dir=tmp_path)
    assert res.model is model  # pruned in place, as in a recipe
    assert weight_sparsity(model) == pytest.approx(0.6, abs=0.02)
    assert res.notes["weight_sparsity"] == pytest.approx(weight_sparsity(model), abs=1e-4)
    assert (tmp_path / "model.sparse.npz").is_file()
    assert evaluate(model, tiny_image_task.x_test, tiny_image_task.y_test) > 0.5


def test_compress_structured_then_int8(net, tiny_image_task, tmp_path):
    model, spec = trained("lenet5", tiny_image_task, epochs=4)
    params0 = sum(p.numel() for p in model.parameters())
    res = api.compress(model, StructuredPrune(ratio=0.5), tiny_image_task, spec=spec,
                       finetune=TrainConfig(epochs=1), work_dir=tmp_path / "s")
    assert sum(p.numel() for p in res.model.parameters()) < 0.6 * params0
    q = api.compress(res.model, QuantizeInt8(select="fixed", calibration_samples=64), tiny_image_task,
                     work_dir=tmp_path / "q")
    assert q.model is None and q.onnx is not None and q.onnx.is_file()  # INT8 is ONNX-only
    assert q.notes["format"].startswith("QDQ")
    acc = onnx_accuracy(q.onnx, tiny_image_task.x_test, tiny_image_task.y_test)
    assert acc >= evaluate(res.model, tiny_image_task.x_test, tiny_image_task.y_test) - 0.05


def test_compress_rejects_a_config_of_no_pass(net, tiny_image_task):
    class NotAPass(PassConfig):
        x: int = 1

    with pytest.raises(EdgeslimError, match="NotAPass is not the config of a registered pass.*MagnitudePrune"):
        api.compress(net[0], NotAPass(), tiny_image_task)


def test_listings_and_quant_report_errors(tmp_path):
    names = {p["name"] for p in api.list_passes()}
    assert {"magnitude_prune", "quantize_int8", "tflite"} <= names
    assert {t["name"] for t in api.list_tasks()["builtin"]} == {"digits", "digits28", "mnist1d"}
    assert "cortex-m4" in {d.name for d in api.list_devices()}
    with pytest.raises(EdgeslimError, match="not a run or stage folder"):
        api.quant_report(tmp_path)
    with pytest.raises(EdgeslimError, match="--ratios: each ratio must lie in"):
        api.sensitivity(tmp_path, "digits", tmp_path, ratios=[0.5, 1.5])
    assert api.RECIPES.joinpath("default.yaml").is_file()
