"""Energy windows for your own code, in the manner of Zeus / CodeCarbon (public as `edgeslim.energy`).

```python
import edgeslim.energy
with edgeslim.energy.window("my-inference") as w:
    run_my_model()
print(w.seconds, w.energy_j, w.method, w.by_domain)   # e.g. 2.1 s, 31.4 J, "measured:rapl"
```
Every reading says where it came from: `measured:rapl` (CPU package + DRAM counters),
`measured:nvml` (NVIDIA GPUs), `measured:rapl+nvml`, or `unavailable` with the reason in `note`
(then `energy_j` is None: a window never invents a number). For an *estimate* of a model's energy
on a device, use `edgeslim.measure.energy.estimate_energy`. Units: s, J.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgeslim.measure import nvml as _nvml
from edgeslim.measure import rapl as _rapl


@dataclass
class Window:
    name: str
    seconds: float = 0.0
    energy_j: float | None = None
    method: str = "unavailable"
    by_domain: dict[str, float] = field(default_factory=dict)  # J per counter ("package-0", "gpu0", ...)
    note: str = ""

    @property
    def energy_mj(self) -> float | None:
        return None if self.energy_j is None else self.energy_j * 1e3

    @property
    def average_power_w(self) -> float | None:
        return None if self.energy_j is None or self.seconds <= 0 else self.energy_j / self.seconds


@contextmanager
def window(name: str = "window", rapl: bool = True, nvml: bool = True,
           powercap_root: Path = _rapl.POWERCAP) -> Iterator[Window]:
    """Measure the wall time and energy of the `with` block. See the module docstring."""
    w = Window(name)
    doms = _rapl.domains(powercap_root) if rapl else []
    gpus = _nvml.handles() if nvml else []
    r0 = _rapl.snapshot(doms) if doms else {}
    g0 = _nvml.snapshot(gpus) if gpus else {}
    t0 = time.perf_counter()
    try:
        yield w
    finally:
        w.seconds = time.perf_counter() - t0
        sources = []
        if doms:
            w.by_domain.update(_rapl.joules_between(doms, r0, _rapl.snapshot(doms)))
            sources.append("rapl")
        if gpus:
            w.by_domain.update(_nvml.joules_between(g0, _nvml.snapshot(gpus)))
            sources.append("nvml")
        if sources:
            w.energy_j = sum(w.by_domain.values())
            w.method = "measured:" + "+".join(sources)
            if w.seconds > 60 and doms:
                w.note = "RAPL counters may wrap more than once in windows of minutes; keep windows short"
        else:
            w.note = (f"no readable RAPL counters under {powercap_root} (missing or root-only) and no NVML "
                      "GPU; use edgeslim.measure.energy.estimate_energy for an estimate")


__all__ = ["Window", "window"]
