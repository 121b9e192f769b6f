"""Hard budgets: parsed from the command line or taken from the device profile, checked twice.

Before training, a candidate's *predicted* footprint (flash, arena, device latency) is checked and an
infeasible candidate is rejected without training (with a small margin for prediction error). After
its proxy fine-tune, the *measured* values are checked exactly; violations go to the sampler as
constraint values (> 0 means violated) so it learns where the feasible region is.

Units: KB = 1024 bytes (the embedded convention), latency in ms, energy in mJ, accuracy drop in points.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from edgeslim.errors import EdgeslimError
from edgeslim.search.space import Footprint

PREDICTION_MARGIN = 0.05  # reject before training only when the prediction exceeds a limit by > 5%

_SIZE = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
_TIME = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3}
_ENERGY = {"": 1.0, "mj": 1.0, "j": 1e3, "uj": 1e-3}


def _parse(text: str, units: dict, example: str, flag: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in units:
        raise EdgeslimError(f"{flag} {text!r}: not understood; write e.g. {example}")
    return float(m.group(1)) * units[m.group(2).lower()]


def parse_size(text: str, flag: str = "--max-flash") -> int:
    return int(_parse(text, _SIZE, "256KB, 1MB or 65536 (bytes)", flag))


def parse_ms(text: str, flag: str = "--max-latency") -> float:
    return _parse(text, _TIME, "20ms, 0.5s or 300us", flag)


def parse_mj(text: str, flag: str = "--max-energy") -> float:
    return _parse(text, _ENERGY, "2mJ or 500uJ", flag)


@dataclass(frozen=True)
class Budget:
    max_flash: int | None = None  # bytes of model file
    max_ram: int | None = None  # bytes of activation arena
    max_latency: float | None = None  # ms per inference on the device (estimated)
    max_energy: float | None = None  # mJ per inference on the device (estimated)
    max_accuracy_drop: float | None = None  # points below the baseline
    source: str = ""  # where each limit came from, for messages

    def as_dict(self) -> dict:
        return asdict(self)


def make_budget(device: Any, max_flash: str | None, max_ram: str | None, max_latency: str | None,
                max_energy: str | None, max_accuracy_drop: float | None) -> Budget:
    """Command-line limits win; flash and RAM default to what the device leaves after its runtime."""
    src = []
    flash = parse_size(max_flash, "--max-flash") if max_flash else None
    ram = parse_size(max_ram, "--max-ram") if max_ram else None
    if flash is None and device is not None:
        flash = int(device.flash_bytes - getattr(device, "runtime_flash_bytes", 0))
        src.append(f"flash from device {device.name}")
    if ram is None and device is not None:
        ram = int(device.sram_bytes - getattr(device, "runtime_ram_bytes", 0))
        src.append(f"RAM from device {device.name}")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise EdgeslimError(f"--max-accuracy-drop {max_accuracy_drop}: must be >= 0 (points)")
    return Budget(flash, ram, parse_ms(max_latency) if max_latency else None,
                  parse_mj(max_energy) if max_energy else None, max_accuracy_drop, "; ".join(src))


def predicted_violations(fp: Footprint, latency_ms: float, budget: Budget) -> list[str]:
    """Limits a predicted footprint breaks by more than the prediction margin (empty: train it)."""
    out = []
    tol = 1 + PREDICTION_MARGIN
    if budget.max_flash is not None and fp.flash_bytes > budget.max_flash * tol:
        out.append(f"flash {fp.flash_bytes:.0f} B > {budget.max_flash} B")
    if budget.max_ram is not None and fp.arena_bytes > budget.max_ram * tol:
        out.append(f"arena {fp.arena_bytes:.0f} B > {budget.max_ram} B")
    if budget.max_latency is not None and latency_ms > budget.max_latency * tol:
        out.append(f"latency {latency_ms:.3g} ms > {budget.max_latency:g} ms")
    return out


def measured_violations(m: dict, base_accuracy: float, budget: Budget, slack: float = 0.0) -> dict[str, float]:
    """Relative excess per limit for measured metrics (> 0: violated), e.g. {'flash': 0.12}. `slack`
    (points) loosens the accuracy limit for proxy-trained candidates only."""
    v: dict[str, float] = {}
    if budget.max_flash is not None:
        v["flash"] = m["flash_bytes"] / budget.max_flash - 1
    if budget.max_ram is not None:
        v["ram"] = m["arena_bytes"] / budget.max_ram - 1
    if budget.max_latency is not None:
        v["latency"] = m["latency_ms"] / budget.max_latency - 1
    if budget.max_energy is not None:
        v["energy"] = m["energy_mj"] / budget.max_energy - 1
    if budget.max_accuracy_drop is not None:
        v["accuracy_drop"] = (100 * (base_accuracy - m["accuracy"]) - budget.max_accuracy_drop - slack) / 100
    return {k: round(x, 9) for k, x in v.items()}  # a drop of exactly the limit is within it


def check_reachable(best: Footprint, best_latency_ms: float, budget: Budget, how: str) -> None:
    """Raise one clear error when even the most compressive corner of the space breaks a limit."""
    from edgeslim.report.results import human_bytes

    bad = []
    if budget.max_flash is not None and best.flash_bytes > budget.max_flash:
        bad.append(f"--max-flash {human_bytes(budget.max_flash)}: the smallest model file the search space "
                   f"reaches is {human_bytes(best.flash_bytes)}")
    if budget.max_ram is not None and best.arena_bytes > budget.max_ram:
        bad.append(f"--max-ram {human_bytes(budget.max_ram)}: the smallest activation arena the search space "
                   f"reaches is {human_bytes(best.arena_bytes)}")
    if budget.max_latency is not None and best_latency_ms > budget.max_latency:
        bad.append(f"--max-latency {budget.max_latency:g} ms: the lowest device latency the search space "
                   f"reaches is {best_latency_ms:.3g} ms")
    if bad:
        raise EdgeslimError("budget cannot be met: " + "; ".join(bad) + f" (predicted, with {how}); "
                            "raise the limit or use a smaller model")
