"""The CLI's plain lines for a battery-life estimate (`measure.battery`): every figure says it is estimated."""

from __future__ import annotations

from edgeslim.measure.battery import SECONDS_PER_YEAR, BatteryLife
from edgeslim.report.results import human_duration


def battery_lines(b: BatteryLife | dict) -> list[str]:
    """Plain lines for the CLI (from an estimate or its `as_dict()`); every figure says it is estimated."""
    if isinstance(b, dict) and b.get("sustainable") is False:
        top = b["max_rate_per_s"]
        return [f"{b['note']} (estimated: one inference takes {b['latency_ms']:.3g} ms on {b['device']})",
                f"  highest sustainable rate (estimated): {top:.3g} inferences/s, one every "
                f"{1.0 / top:.3g} s; pass a lower --rate (e.g. 1/min) for a lifetime"]
    if isinstance(b, dict):
        b = BatteryLife(**{k: v for k, v in b.items() if k != "lifetime_days"})
    out = [
        f"battery life (estimated): {human_duration(b.lifetime_s)} on {b.battery} at {b.rate} "
        f"({b.rate_per_s:.3g} inferences/s)",
        f"  average power {b.average_power_mw:.3g} mW = {b.rate_per_s:.3g}/s x {b.energy_mj:.3g} mJ + "
        f"{b.rest_mode} {b.rest_power_mw:g} mW x {100 * (1 - b.duty):.2f}% of the time; inference is "
        f"{100 * b.inference_share:.0f}% of it",
    ]
    if b.inference_share < 0.5:
        out.append(f"  the {b.rest_mode} power dominates: a smaller model barely changes this lifetime")
    if b.lifetime_s > 5 * SECONDS_PER_YEAR:
        out.append("  longer than 5 years: battery self-discharge (ignored here) will end it sooner")
    if b.fleet is not None and b.fleet_kwh_per_year is not None and b.fleet_co2_kg_per_year is not None:
        out.append(f"  fleet of {b.fleet:,} (estimated): {b.fleet_kwh_per_year:.4g} kWh/year, "
                   f"{b.fleet_co2_kg_per_year:.4g} kg CO2e/year at {b.grid_g_per_kwh:g} g CO2e/kWh")
    return out
