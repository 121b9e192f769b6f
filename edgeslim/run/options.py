"""`RunOptions`: how a recipe run goes (`api.run`, `pipeline.run_*_recipe`, the stage loop), one pydantic
object instead of a keyword list spelled at every layer. What is run (model, recipe, task or inputs, run
folder) stays in the calls' own parameters; this is everything else."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeslim.accelerator import Accelerator


class RunOptions(BaseModel):
    """`device`: the profile name or YAML path the run's figures are for (default: the recipe's `device:`,
    else EDGESLIM_DEVICE, else the default profile; the stage loop gets it resolved). `seed`: data split,
    training and calibration. `force`: overwrite a run folder that holds another run. `threads`: ONNX Runtime
    threads of the stage measurements. `report`: compare the stages at the end and write report.html.
    `trust_pickle` / `model_class` (`module:Class`): how a PyTorch file loads. `accelerator`: where training
    runs (`edgeslim.accelerator`; None: as set around the call by `accelerator.use`, else auto)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = None
    seed: int = 0
    quiet: bool = False
    force: bool = False
    threads: int = Field(1, ge=1)
    report: bool = True
    trust_pickle: bool = False
    model_class: str | None = None
    accelerator: Accelerator | None = None

    @field_validator("device", mode="before")
    @classmethod
    def _device_path(cls, v: object) -> object:  # a profile may come as a Path
        return str(v) if isinstance(v, Path) else v

    def resolved(self, recipe_device: str | None) -> RunOptions:
        """These options with `device` resolved (given, else the recipe's `device:`, else EDGESLIM_DEVICE, else
        the default profile) and checked: an unknown device is one line, before anything is written."""
        import os

        from edgeslim.devices import DEFAULT_DEVICE, load_device

        dev = self.device or recipe_device or os.environ.get("EDGESLIM_DEVICE") or DEFAULT_DEVICE
        load_device(dev)
        return self.model_copy(update={"device": dev})

    def accelerated(self) -> AbstractContextManager[Any]:
        """`accelerator.use(self.accelerator)` when these options name one, else the one set around the call."""
        from edgeslim.accelerator import use

        return use(self.accelerator) if self.accelerator is not None else nullcontext()

    def __repr__(self) -> str:  # short: only what differs from the defaults
        from edgeslim.configs import short_repr

        return short_repr(self)


def run_options(options: RunOptions | None, fields: dict[str, Any]) -> RunOptions:
    """`options` with `fields` (RunOptions field names) applied on top; a bad one is one `EdgeslimError` line."""
    from edgeslim.configs import with_fields

    return with_fields(RunOptions, "run", options, fields)
