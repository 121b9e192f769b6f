"""What the measurement core measures: an ONNX file, an edgeslim model folder (exported to ONNX once, in a
temporary folder) or a `.tflite` file (LiteRT extra); its size on disk; whether a task's samples fit its input.

Accuracy (`onnxkit.session.onnx_accuracy`, the one accuracy of an ONNX model) needs a classifier: one input
that takes the task's samples and a first output of class scores [N, classes]. A model with a fixed batch
(e.g. [8, 3, 32, 32]) is fed exactly that many samples per run, the last chunk padded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.inputs import InputSpec


@dataclass
class Source:
    """A model opened for measuring. `onnx` is None only for a `.tflite`."""

    path: Path                       # what the user named
    kind: str                        # "onnx" | "folder" | "tflite"
    onnx: Path | None                # the ONNX file measured in ONNX Runtime
    size_path: Path                  # the stored artifact whose bytes are `size_bytes`
    net: Any = None                  # the PyTorch model of a model folder
    spec: dict | None = None
    shapes: list[str] = field(default_factory=list)  # `--shape` default (a stage of an ONNX run: its sample shape)


@contextmanager
def open_model(model: str | Path, trust_pickle: bool = False) -> Iterator[Source]:
    """Open `model` (ONNX file, model folder with spec.json, or .tflite); a folder is exported to a temporary
    ONNX file that is removed afterwards. Anything else is one `EdgeslimError` line."""
    p = Path(model)
    if p.is_file() and p.suffix == ".tflite":
        yield Source(p, "tflite", None, p)
        return
    if p.is_file() and p.suffix == ".onnx":
        from edgeslim.untrusted import check_onnx_file

        check_onnx_file(p)  # corrupt files and external data outside the folder: one line
        yield Source(p, "onnx", p, p)
        return
    from edgeslim.models.io import onnx_stage

    staged = onnx_stage(p)
    if staged is not None:  # a stage of a run on an ONNX file: its ONNX is the stage
        yield Source(p, "onnx", staged[0], staged[0], shapes=staged[1])
        return
    if p.is_dir() and (p / "spec.json").is_file():
        from edgeslim import models
        from edgeslim.deploy.export import export_onnx

        net, spec = models.load_model(p, trust_pickle=trust_pickle)
        tmp = Path(tempfile.mkdtemp(prefix="edgeslim-measure-"))
        try:
            out = tmp / "model.onnx"
            export_onnx(net, tuple(spec["input_shape"]), out)
            yield Source(p, "folder", out, p / models.io.WEIGHTS, net.eval(), spec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if not p.exists():
        raise EdgeslimError(f"{p}: no such file or folder")
    raise EdgeslimError(f"{p}: not an ONNX file, .tflite file or edgeslim model folder (with spec.json)")


def file_bytes(path: Path) -> int:
    """Bytes on disk; for an ONNX file its external data files too."""
    path = Path(path)
    if path.suffix != ".onnx":
        return path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    extra = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / x).stat().st_size for x in extra if (path.parent / x).is_file())


def has_control_flow(model: onnx.ModelProto) -> bool:
    """True when the main graph holds If/Loop/Scan (their bodies escape static shapes and counts)."""
    return any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node)


def check_task_input(specs: list[InputSpec], task: Any, where: str) -> InputSpec:
    """The one input a task's samples go to; one line when the model cannot take them."""
    if len(specs) != 1:
        raise EdgeslimError(f"{where}: --task needs a model with one input; it has {len(specs)} "
                            f"({', '.join(s.name for s in specs)}): measure it with --inputs instead")
    s = specs[0]
    want = tuple(task.input_shape)
    if s.dims is not None:
        got = tuple(s.dims[1:])
        if len(got) != len(want) or any(isinstance(d, int) and d != w for d, w in zip(got, want)):
            raise EdgeslimError(f"{where}: input '{s.name}' takes samples of shape {s.show()} but task "
                                f"'{task.name}' has samples of shape {list(want)}")
    return s


def fixed_batch(spec: InputSpec) -> int | None:
    """The input's batch when its leading dim is fixed (e.g. 1), else None."""
    lead = spec.dims[0] if spec.dims else None
    return lead if isinstance(lead, int) else None
