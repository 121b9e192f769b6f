"""`SearchJob`: the one config object of a hardware-aware search (`api.search(job)`, `edgeslim search`).

It holds what the user chooses, validated once (pydantic); `study_config()` turns it into the study's
stored identity (`SearchConfig`: the budget resolved against the device profile), which a resumed or
joined study must match. Where the run goes (storage, workers, waiting) is not part of that identity."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeslim.accelerator import Accelerator


class SearchJob(BaseModel):
    """A search for `device` under hard budgets. Sizes: `max_flash`/`max_ram` like 256KB (default: what the
    device leaves after its runtime); `max_latency` like 20ms and `max_energy` like 2mJ (estimated on the
    device); `max_accuracy_drop` in accuracy points below the baseline. `trials` are shared by every worker
    of a `storage` (journal:///file, sqlite:///file, postgresql://...; default: a journal in `out`); a
    `worker` only runs trials. `wait`: seconds to wait for other workers before the final stage, which fully
    fine-tunes the `top` front members. Training runs on `accelerator`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(description="trained model folder (edgeslim train)")
    task: str = Field(description="built-in task name or path to data")
    out: Path = Path("runs/search")
    device: str = "cortex-m4"
    trials: int = Field(20, ge=1)
    objectives: tuple[str, ...] = ("accuracy", "energy")
    max_flash: str | None = None
    max_ram: str | None = None
    max_latency: str | None = None
    max_energy: str | None = None
    max_accuracy_drop: float | None = Field(1.0, ge=0)
    proxy_epochs: int = Field(3, ge=0, description="fine-tuning epochs of the proxy that ranks trials")
    proxy_slack: float = Field(2.0, ge=0, description="extra accuracy points a proxy may lose")
    top: int = Field(6, ge=0)
    knobs: tuple[str, ...] | None = Field(None, description="restrict the space to these knobs (default: all)")
    sampler: str = "tpe"
    guided: bool = True
    storage: str | None = None
    study_name: str = "edgeslim-search"
    worker: bool = False
    wait: float = Field(3600.0, ge=0)
    seed: int = 0
    accelerator: Accelerator = "auto"

    @field_validator("task", mode="before")
    @classmethod
    def _task_path(cls, v: object) -> object:  # a data path may come as a Path
        return str(v) if isinstance(v, Path) else v

    def study_config(self):  # -> edgeslim.search.study.SearchConfig
        """The study's identity: this job's choices with the budget resolved on the device profile."""
        from edgeslim.search.constraints import make_budget
        from edgeslim.search.study import SearchConfig, load_device_profile

        budget = make_budget(load_device_profile(self.device), self.max_flash, self.max_ram, self.max_latency,
                             self.max_energy, self.max_accuracy_drop)
        cfg = SearchConfig(model=str(Path(self.model).resolve()), task=self.task, device=self.device,
                           objectives=list(self.objectives), trials=self.trials, budget=budget.as_dict(),
                           proxy_epochs=self.proxy_epochs, proxy_slack=self.proxy_slack, seed=self.seed,
                           sampler=self.sampler, guided=self.guided)
        if self.knobs:
            cfg.knobs = list(self.knobs)
        return cfg
