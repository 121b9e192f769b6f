"""The API's catalogue of what is built in: the model zoo, the passes a recipe may use, the tasks and the data
formats a task path may take, the recipes and the device profiles (`edgeslim.api` re-exports each:
`api.list_models`, `api.list_passes`, `api.list_tasks`, `api.list_recipes`, `api.list_devices`)."""

from __future__ import annotations

from typing import Any

from edgeslim.data import BUILTIN
from edgeslim.models.counts import count_macs, count_params
from edgeslim.recipe import builtin_recipes, recipe_about

TASK_FORMATS = [
    ".npz with x_train,y_train,x_test,y_test (or x,y)",
    "folder of images, one sub-folder per class",
    ".csv with a label column (label/class/target/y)",
    "folder in the CIFAR-10 binary layout (data_batch_*.bin, test_batch.bin)",
]


def list_models() -> list[dict]:
    """The model zoo with parameters and MACs at each model's reference input."""
    from edgeslim.models.zoo import ZOO

    rows: list[dict] = []
    for name, e in ZOO.items():
        net = e.build(e.ref_shape, e.ref_classes or 10)
        rows.append({"name": name, "about": e.about, "ref_input": list(e.ref_shape),
                     "params": count_params(net)[0], "macs": count_macs(net, e.ref_shape)})
    return rows


def list_passes() -> list[dict]:
    """The passes a recipe may use: name, what they consume and produce (torch model or ONNX; `kind` is what
    they produce), whether they must come last, what they do, config fields and defaults, and `config`: the
    config class to import for `compress` (`edgeslim.passes.structured_prune.StructuredPrune`)."""
    from edgeslim.passes import PASSES

    return [
        {"name": p.name, "kind": p.kind, "consumes": p.consumes, "produces": p.produces,
         "must_be_last": p.must_be_last, "about": p.about,
         "config": f"{p.config.__module__}.{p.config.__qualname__}",
         "fields": {k: repr(f.get_default(call_default_factory=True)) for k, f in p.config.model_fields.items()}}
        for p in sorted(PASSES.values(), key=lambda p: p.name) if not p.name.startswith("_")
    ]


def list_tasks() -> dict:
    """Built-in tasks and the formats a task path may take; `text`: the tasks of text encoders."""
    from edgeslim.nlp.text import BUILTIN_TEXT, TEXT_FORMATS

    return {"builtin": [{"name": k, "about": v[1]} for k, v in BUILTIN.items()],
            "text": [{"name": k, "about": v} for k, v in BUILTIN_TEXT.items()],
            "formats": list(TASK_FORMATS) + list(TEXT_FORMATS)}


def list_recipes() -> list[dict]:
    """The built-in recipes (package data): name, file and one-line description."""
    return [{"name": n, "path": str(p), "about": recipe_about(p)} for n, p in builtin_recipes().items()]


def list_devices() -> list[Any]:  # -> list[edgeslim.devices.Device]
    """The built-in device profiles (pass a device's name, or a YAML path of your own)."""
    from edgeslim.devices import builtin_devices, load_device

    return [load_device(n) for n in builtin_devices()]
