"""Intel/AMD RAPL energy counters through Linux powercap sysfs.

Layout: `/sys/class/powercap/intel-rapl:<pkg>/` (a package domain) with `name` ("package-0"),
`energy_uj` (a monotonically increasing counter in microjoules that wraps to 0 after
`max_energy_range_uj`) and sub-domains `intel-rapl:<pkg>:<n>` (core, uncore, dram). We read the
package and DRAM domains; core/uncore are inside the package and would double count. Since 2020
kernels make `energy_uj` root-readable only; then `available()` is False and callers estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Domain:
    name: str  # "package-0", "dram", ...; sub-domains are prefixed "package-0/dram"
    path: Path  # the domain folder
    max_range_uj: int  # the counter wraps to 0 after this value


def domains(root: Path = POWERCAP) -> list[Domain]:
    """Readable package and DRAM domains under `root` (empty when there are none or no permission)."""
    out: list[Domain] = []
    if not root.is_dir():
        return out
    for d in sorted(root.glob("intel-rapl:*")):
        parts = d.name.split(":")
        try:
            name = (d / "name").read_text().strip()
            max_range = int((d / "max_energy_range_uj").read_text())
            int((d / "energy_uj").read_text())  # permission check
        except (OSError, ValueError):
            continue
        if len(parts) == 2 and name.startswith("package"):
            out.append(Domain(name, d, max_range))
        elif len(parts) == 3 and name == "dram":
            parent = (root / ":".join(parts[:2]) / "name")
            pname = parent.read_text().strip() if parent.is_file() else parts[1]
            out.append(Domain(f"{pname}/dram", d, max_range))
    return out


def available(root: Path = POWERCAP) -> bool:
    return bool(domains(root))


def read_uj(domain: Domain) -> int:
    return int((domain.path / "energy_uj").read_text())


def delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Energy between two readings of one counter, in uJ, across at most one wrap-around."""
    if end >= start:
        return end - start
    return max_range_uj - start + end


def snapshot(doms: list[Domain]) -> dict[str, int]:
    return {d.name: read_uj(d) for d in doms}


def joules_between(doms: list[Domain], start: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    """Per-domain energy in J between two snapshots."""
    return {d.name: delta_uj(start[d.name], end[d.name], d.max_range_uj) * 1e-6 for d in doms}
