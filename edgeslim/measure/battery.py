"""Battery life and fleet footprint of a duty-cycled device: an *estimate* built on the energy estimate.

A device wakes `rate` times per second, runs one inference (energy E, time t, both estimated for the
device profile), and rests in between at the profile's sleep (or idle) power:

    duty          = rate x t                                   (fraction of time spent inferring, <= 1)
    P_average     = rate x E + P_rest x (1 - duty)             (mW = mJ/s)
    lifetime      = battery energy / P_average                 (battery energy = mAh x V x 3.6 J)
    fleet energy  = N x P_average x 8,760 h                    (kWh per year)
    fleet CO2     = fleet energy x grid intensity              (kg CO2e per year)

What it ignores: battery self-discharge (~1-2 %/year for a lithium coin cell), capacity lost to high
pulse currents, cold and the cut-off voltage, DC-DC/LDO efficiency (unless folded into the profile's
powers), sensors, radios and the work around the inference (reading a sensor, feature extraction,
sending a result), and the time and energy of waking up. Use it to compare models, not to promise
a product's battery life. Units: mJ, ms, mW, J, days, kWh, kg. The CLI's lines for an estimate are
`edgeslim.cli.battery.battery_lines`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from edgeslim.errors import EdgeslimError

__all__ = ["Battery", "BatteryLife", "LifeOptions", "Rate", "battery_life", "for_device", "parse_battery", "parse_rate"]

SECONDS_PER_YEAR = 365 * 24 * 3600
# Grid carbon intensity used for --fleet unless --grid-intensity is given: the world-average CO2 intensity of
# electricity generation, ~475 g CO2/kWh (IEA, Global Energy & CO2 Status Report 2019, figure for 2018).
DEFAULT_GRID_G_PER_KWH = 475.0
GRID_SOURCE = "world average, IEA Global Energy & CO2 Status Report 2019"

_NUM = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_BATTERY = re.compile(rf"^\s*(?P<cap>{_NUM})\s*(?P<cu>mah|ah)\s*@\s*(?P<v>{_NUM})\s*v\s*$", re.I)
_ENERGY = re.compile(rf"^\s*(?P<e>{_NUM})\s*(?P<eu>mwh|wh|kj|j)\s*$", re.I)
_RATE = re.compile(rf"^\s*(?P<n>{_NUM})\s*/\s*(?P<per>{_NUM})?\s*(?P<u>s|sec|second|min|minute|h|hr|hour|d|day)s?\s*$",
                   re.I)
_HZ = re.compile(rf"^\s*(?P<n>{_NUM})\s*hz\s*$", re.I)
_UNIT_S = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600,
           "d": 86400, "day": 86400}


@dataclass(frozen=True)
class Battery:
    energy_j: float  # usable energy, J
    text: str  # as the user wrote it, e.g. "225mAh@3V"

    @property
    def energy_mwh(self) -> float:
        return self.energy_j / 3.6


@dataclass(frozen=True)
class Rate:
    per_second: float  # inferences per second
    text: str


def parse_battery(text: str, option: str = "--battery") -> Battery:
    """'225mAh@3V', '2.5Ah@3.7V', '0.675Wh', '675mWh' or '2430J' -> usable energy (J)."""
    m = _BATTERY.match(text or "")
    if m:
        mah = float(m.group("cap")) * (1000.0 if m.group("cu").lower() == "ah" else 1.0)
        volts = float(m.group("v"))
        energy = mah * volts * 3.6  # mAh x V = mWh; 1 mWh = 3.6 J
    else:
        m = _ENERGY.match(text or "")
        if not m:
            raise EdgeslimError(f"{option} '{text}': expected a capacity at a voltage like 225mAh@3V (or an energy "
                                "like 0.675Wh, 675mWh, 2430J)")
        scale = {"mwh": 3.6, "wh": 3600.0, "kj": 1000.0, "j": 1.0}[m.group("eu").lower()]
        energy = float(m.group("e")) * scale
    if energy <= 0:
        raise EdgeslimError(f"{option} '{text}': the battery must hold a positive energy")
    return Battery(energy, text.strip())


def parse_rate(text: str, option: str = "--rate") -> Rate:
    """'1/s', '10/min', '0.5/s', '1/h', '24/day', '1/10min', '2Hz' -> inferences per second."""
    m = _RATE.match(text or "")
    if m:
        per = float(m.group("per")) if m.group("per") else 1.0
        r = float(m.group("n")) / (per * _UNIT_S[m.group("u").lower()])
    else:
        m = _HZ.match(text or "")
        if not m:
            raise EdgeslimError(f"{option} '{text}': expected inferences per time like 1/s, 10/min, 0.5/s, 1/h, "
                                "24/day or 2Hz")
        r = float(m.group("n"))
    if r <= 0:
        raise EdgeslimError(f"{option} '{text}': the rate must be positive")
    return Rate(r, text.strip())


@dataclass(frozen=True)
class BatteryLife:
    """One estimate. Every figure is *estimated* (the inference energy and time come from the profile)."""

    device: str
    battery: str
    battery_j: float
    rate: str
    rate_per_s: float
    energy_mj: float  # per inference
    latency_ms: float  # per inference, on the device
    rest_power_mw: float  # power between inferences
    rest_mode: str  # "sleep" | "idle"
    duty: float  # fraction of time inferring
    average_power_mw: float
    inference_share: float  # fraction of the average power spent inferring
    lifetime_s: float
    method: str  # "estimated: ..."
    fleet: int | None = None
    fleet_kwh_per_year: float | None = None
    grid_g_per_kwh: float | None = None
    fleet_co2_kg_per_year: float | None = None

    @property
    def lifetime_days(self) -> float:
        return self.lifetime_s / 86400

    def as_dict(self) -> dict:
        return {**asdict(self), "lifetime_days": self.lifetime_days}


def battery_life(energy_mj: float, latency_ms: float, rate: Rate, battery: Battery, rest_power_mw: float,
                 rest_mode: str = "sleep", device: str = "?", fleet: int | None = None,
                 grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH, energy_method: str | None = None) -> BatteryLife:
    """The estimate of the module docstring. Raises EdgeslimError when inferences at `rate` do not fit
    in a second (duty > 1). `energy_method` (the energy figure's label, e.g. estimated:calibrated@cortex-m4
    (LOO error ...)) heads the estimate's `method`, so the lifetime carries the label of the energy under it."""
    if energy_mj is None or latency_ms is None:
        raise EdgeslimError(f"battery life needs an energy and latency estimate for {device}; none was made")
    duty = rate.per_second * latency_ms / 1e3
    if duty > 1:
        raise EdgeslimError(
            f"--rate {rate.text}: one inference takes {latency_ms:.3g} ms on {device} (estimated), so at most "
            f"{1e3 / latency_ms:.3g} inferences/s fit; lower the rate")
    if fleet is not None and fleet < 1:
        raise EdgeslimError(f"--fleet {fleet}: the number of devices must be at least 1")
    if grid_g_per_kwh < 0:
        raise EdgeslimError(f"--grid-intensity {grid_g_per_kwh}: must be >= 0 g CO2e/kWh")
    infer_mw = rate.per_second * energy_mj  # mJ/s = mW
    avg = infer_mw + rest_power_mw * (1 - duty)
    if avg <= 0:
        raise EdgeslimError(f"device {device}: average power is 0 mW (no energy and no rest power): no lifetime")
    life_s = battery.energy_j * 1e3 / avg  # mJ / (mJ/s)
    kwh = co2 = None
    if fleet is not None:
        kwh = fleet * avg * 1e-3 * SECONDS_PER_YEAR / 3.6e6  # W x s = J; 3.6e6 J per kWh
        co2 = kwh * grid_g_per_kwh / 1e3
    return BatteryLife(
        device=device, battery=battery.text, battery_j=battery.energy_j, rate=rate.text, rate_per_s=rate.per_second,
        energy_mj=energy_mj, latency_ms=latency_ms, rest_power_mw=rest_power_mw, rest_mode=rest_mode, duty=duty,
        average_power_mw=avg, inference_share=infer_mw / avg, lifetime_s=life_s,
        method=f"{energy_method or f'estimated: profile {device}'} ({rest_mode} {rest_power_mw:g} mW between "
               "inferences)",
        fleet=fleet, fleet_kwh_per_year=kwh, grid_g_per_kwh=grid_g_per_kwh if fleet is not None else None,
        fleet_co2_kg_per_year=co2,
    )


def rest_power(device: object, mode: str | None = None) -> tuple[float, str]:
    """(mW, mode) between inferences: the profile's sleep power when it has one, else its idle power."""
    sleep = getattr(device, "sleep_power_mw", None)
    idle = float(getattr(device, "idle_power_mw", 0.0) or 0.0)
    if mode not in (None, "sleep", "idle"):
        raise EdgeslimError(f"--between '{mode}': valid: idle, sleep")
    if mode == "idle" or (mode is None and sleep is None):
        return idle, "idle"
    if sleep is None:
        raise EdgeslimError(f"device {getattr(device, 'name', '?')}: the profile has no sleep_power_mw; "
                            "use --between idle or add it to the profile")
    return float(sleep), "sleep"


def for_device(energy_mj: float, latency_ms: float, device: object, battery: str | None = None,
               rate: str | None = None, between: str | None = None, fleet: int | None = None,
               grid_g_per_kwh: float | None = None, energy_method: str | None = None) -> BatteryLife | None:
    """The estimate for a device profile, with the profile's default battery and 1/s when not given.
    None when there is neither a battery option nor a profile default (nothing to estimate against)."""
    text = battery or getattr(device, "battery", None)
    if text is None:
        if rate is not None or fleet is not None:
            raise EdgeslimError(f"device {getattr(device, 'name', '?')} has no default battery: pass --battery, "
                                "e.g. --battery 225mAh@3V")
        return None
    b = parse_battery(text, "--battery" if battery else f"device {getattr(device, 'name', '?')} battery")
    r = parse_rate(rate or DEFAULT_RATE)
    p, mode = rest_power(device, between)
    g = DEFAULT_GRID_G_PER_KWH if grid_g_per_kwh is None else grid_g_per_kwh
    return battery_life(energy_mj, latency_ms, r, b, p, mode, getattr(device, "name", "?"), fleet, g, energy_method)


DEFAULT_RATE = "1/s"


def requested(battery: str | None, rate: str | None, fleet: int | None) -> bool:
    return battery is not None or rate is not None or fleet is not None


def not_sustainable(latency_ms: float, device: str, battery: str, rate: str = DEFAULT_RATE,
                    energy_method: str | None = None) -> dict:
    """The `battery` entry of a row whose model cannot keep up with the *default* rate: no lifetime, the
    highest sustainable rate instead (inferences/s = 1000 / latency_ms, estimated like the latency). An
    explicit --rate that cannot be kept stays an error (`battery_life`)."""
    top = 1e3 / latency_ms
    return {"device": device, "battery": battery, "rate": rate, "rate_per_s": parse_rate(rate).per_second,
            "sustainable": False, "latency_ms": latency_ms, "max_rate_per_s": top,
            "note": f"battery life at {rate}: not sustainable",
            "method": f"{energy_method or f'estimated: profile {device}'} (one inference takes {latency_ms:.3g} ms)"}


def for_row(row: dict, device_name: str | None, battery: str | None, rate: str | None, between: str | None,
            fleet: int | None, grid_g_per_kwh: float | None) -> BatteryLife | dict | None:
    """The estimate for one `measure` or `fit` row (its `energy_mj` and device latency). None when the row
    has no energy estimate and nothing was asked explicitly."""
    from edgeslim.devices import load_device

    dev = load_device(device_name or row.get("deploy_device") or "host")  # the user's name or YAML path first
    # the device latency that goes with the energy: measure rows `energy_latency_ms`, fit rows `latency_ms`
    e = row.get("energy_mj")
    t = row.get("energy_latency_ms") or row.get("latency_ms") or row.get("latency_ms_p50")
    if e is None or t is None:
        if requested(battery, rate, fleet):
            why = row.get("energy_note") or "the model's operators could not be counted"
            raise EdgeslimError(f"{row.get('name') or row.get('model') or '?'}: no energy estimate to build a "
                                f"battery life on ({why}; `measure` without --quick, or an ONNX model, .tflite "
                                "or model folder, gives one)")
        return None
    if rate is None and float(t) * parse_rate(DEFAULT_RATE).per_second > 1e3:  # the default rate: a verdict
        text = battery or getattr(dev, "battery", None)
        if text is None and fleet is None:
            return None
        return not_sustainable(float(t), getattr(dev, "name", "?"), text or "?", energy_method=row.get("energy_method"))
    return for_device(float(e), float(t), dev, battery, rate, between, fleet, grid_g_per_kwh, row.get("energy_method"))


@dataclass(frozen=True)
class LifeOptions:
    """What a battery-life estimate is asked for (the CLI's --battery, --rate, --between, --fleet,
    --grid-intensity); all optional: the device profile's battery at 1/s by default."""

    battery: str | None = None
    rate: str | None = None
    between: str | None = None
    fleet: int | None = None
    grid_intensity: float | None = None  # g CO2e/kWh

    def checked(self) -> LifeOptions:
        """Self, after validating every option up front (one-line EdgeslimError naming the option), so a typo
        fails before any model is loaded."""
        if self.battery is not None:
            parse_battery(self.battery)
        if self.rate is not None:
            parse_rate(self.rate)
        if self.between not in (None, "sleep", "idle"):
            raise EdgeslimError(f"--between '{self.between}': valid: idle, sleep")
        if self.fleet is not None and self.fleet < 1:
            raise EdgeslimError(f"--fleet {self.fleet}: the number of devices must be at least 1")
        if self.grid_intensity is not None and self.grid_intensity < 0:
            raise EdgeslimError(f"--grid-intensity {self.grid_intensity}: must be >= 0 g CO2e/kWh")
        return self

    def annotate_rows(self, rows: list[dict], device: str | None) -> list[dict]:
        """Add `battery` (the estimate as a dict) to each row with an energy estimate (`energy_mj` and
        `energy_latency_ms` or `latency_ms`, as `measure` and `fit` rows have); returns the rows."""
        for row in rows:
            life = for_row(row, device, self.battery, self.rate, self.between, self.fleet, self.grid_intensity)
            if life is not None:
                row["battery"] = life if isinstance(life, dict) else life.as_dict()
        return rows
