"""`MeasureOptions`: how one model is measured (`measure.core.measure_model`, `api.measure`), one pydantic
object instead of a keyword list spelled at every layer. Units: seconds, calls, threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class MeasureOptions(BaseModel):
    """What to measure and how. `device`: a profile name, YAML path or `Device` for arena, flash, fit and
    energy (default: the default profile; `api.measure`: this host). `runs` timed calls (fewer, at least 30,
    after `max_seconds`); `batch`: also time this batch size; `latency=False` skips timing; `deploy`: arena,
    flash, fit and energy. `torch_eager`: time the PyTorch model beside ONNX Runtime and check parity; `rss`:
    the inference process's peak RSS (bytes). `task` (a `Task`): accuracy; `reference` (a model): fidelity.
    `torch_model`/`size_path`: the pipeline's PyTorch model for the counts and the stored artifact when it is
    not the ONNX file. `predictions`: with a task, the test split's class scores are saved there."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    shapes: tuple[str, ...] = Field((), description="NAME=D0,D1,... sizes for symbolic dims of synthetic inputs")
    task: Any = None
    device: Any = None  # str | Path | edgeslim.devices.Device | None
    reference: str | Path | None = None
    threads: int = Field(1, ge=1)
    batch: int | None = Field(None, ge=1)
    runs: int = Field(200, ge=0)
    max_seconds: float = Field(5.0, gt=0)
    latency: bool = True
    deploy: bool = True
    torch_eager: bool = False
    rss: bool = False
    torch_model: Any = None
    size_path: Path | None = None
    seed: int = 0
    trust_pickle: bool = False
    predictions: Path | None = None

    def __repr__(self) -> str:  # short: the task and the model are objects, not their data
        show = {k: v for k, v in self if v != type(self).model_fields[k].default}
        for k in ("task", "torch_model"):
            if k in show:
                show[k] = getattr(show[k], "name", type(show[k]).__name__)
        return f"MeasureOptions({', '.join(f'{k}={v!r}' for k, v in show.items())})"


def measure_options(options: MeasureOptions | None, fields: dict[str, Any]) -> MeasureOptions:
    """`options` with `fields` (MeasureOptions field names) applied on top, validated."""
    if not fields:
        return options or MeasureOptions()
    base = dict(options) if options is not None else {}  # the fields as they are (a task stays that object)
    return MeasureOptions(**{**base, **fields})
