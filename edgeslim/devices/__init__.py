"""Device profiles: YAML files describing an edge target, and the loader.

A profile says how much memory the device has (flash/storage for weights, SRAM or DRAM for the
activation arena), how fast it multiplies (peak MACs per cycle by precision, clock, and the fraction
of peak that real kernels reach), how much energy an operation and a byte moved cost, and its
idle/active power. Built-in profiles live next to this file; users pass a path to their own YAML
(same keys; see `host.yaml` for the annotated layout).

Energy costs default to the 45 nm figures of Horowitz (ISSCC 2014) multiplied by `energy_scale`;
a profile may override any of them under `energy:`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeslim.errors import EdgeslimError, choices

HERE = Path(__file__).resolve().parent
Precision = Literal["int8", "fp16", "fp32"]
MemLevel = Literal["sram", "flash", "dram", "cache"]

# Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 0.9 V. pJ per operation / per byte.
# MAC = multiply + add: int8 0.2 + 0.03, fp16 1.1 + 0.4, fp32 3.7 + 0.9.
HOROWITZ_45NM_PJ_PER_MAC = {"int8": 0.23, "fp16": 1.5, "fp32": 4.6}
# 32-bit reads: 8 KB SRAM ~5 pJ (brief: "32-bit SRAM read ~5 pJ"), large cache ~ 100 pJ/64-bit -> ~12.5 pJ/B
# we use 20 pJ per 32-bit for cache, DRAM ~640 pJ per 32-bit. Flash is not in Horowitz: embedded NOR flash
# reads cost roughly 4-8x an SRAM read on MCUs; we assume 25 pJ per 32-bit word (labelled assumption).
HOROWITZ_45NM_PJ_PER_BYTE = {"sram": 5.0 / 4, "cache": 20.0 / 4, "dram": 640.0 / 4, "flash": 25.0 / 4}


class EnergyCosts(BaseModel):
    """Per-operation and per-byte energies in pJ (already scaled to the device)."""

    model_config = ConfigDict(extra="forbid")
    pj_per_mac: dict[Precision, float] = Field(default_factory=dict)
    pj_per_byte: dict[MemLevel, float] = Field(default_factory=dict)


class Calibration(BaseModel):
    """How a profile's figures were fitted to published measurements (`edgeslim.devices.calibrate`)."""

    model_config = ConfigDict(extra="forbid")
    fitted: dict[str, float] = Field(description="profile key -> fitted value")
    a_priori: dict[str, float] = Field(default_factory=dict, description="the values before the fit")
    fitted_on: str = Field(description="the one published measurement the fit used")
    held_out: dict[str, str] = Field(default_factory=dict, description="check on the other measurements")
    source: str
    command: str = ""
    loo: dict[str, str] = Field(default_factory=dict, description="leave-one-out: each point predicted by the fit "
                                "on the others")
    loo_energy_ratio: list[float] = Field(default_factory=list, description="[min, max] leave-one-out energy "
                                          "ratio, estimate / published")
    precisions: list[str] = Field(default_factory=lambda: ["int8"], description="precisions the published points "
                                  "ran in; others are 'uncalibrated precision'")


class Device(BaseModel):
    """One edge target. Units: bytes, MHz, MACs per cycle, mW, pJ."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["mcu", "cpu", "gpu"] = "cpu"
    runtime: str = Field("", description="inference runtime: tflite-micro, tflite, onnxruntime, ...; "
                         "'' = tflite-micro on an mcu, onnxruntime elsewhere")
    arch: str = Field("", description="CPU architecture (x86_64, aarch64, armv7e-m, ...); speed decisions are "
                      "timed on this host only for the host or the same runtime on the same arch")
    clock_mhz: float = Field(description="core clock, MHz")
    cores: int = 1
    flash_bytes: int = Field(description="storage for weights + runtime code (flash on MCUs, eMMC/disk on boards)")
    sram_bytes: int = Field(description="memory that holds the activation arena (on-chip SRAM or usable DRAM)")
    dram_bytes: int = 0
    weights_in: MemLevel = "flash"
    activations_in: MemLevel = "sram"
    runtime_flash_bytes: int = Field(0, description="flash taken by the inference runtime code (e.g. TFLM)")
    runtime_ram_bytes: int = Field(0, description="RAM the runtime needs besides the arena (stack, tensors)")
    peak_macs_per_cycle: dict[Precision, float] = Field(description="peak MACs per cycle per core by precision, "
                                                        "e.g. {int8: 2.0, fp32: 0.5}")
    efficiency: float = Field(0.3, gt=0, le=1, description="fraction of peak MAC rate real kernels reach")
    active_power_mw: float = Field(description="board/core power while running inference")
    idle_power_mw: float = Field(0.0, description="awake but not computing (clock running, CPU halted), mW")
    sleep_power_mw: float | None = Field(None, description="deepest mode that keeps RAM (wakes on a timer), mW")
    battery: str | None = Field(None, description="default battery for lifetime estimates, e.g. 225mAh@3V")
    calibration: Calibration | None = None
    energy_scale: float = Field(1.0, description="multiplier on Horowitz 45 nm energies for this process")
    energy: EnergyCosts = Field(default_factory=EnergyCosts)
    source: str = ""
    vela: dict[str, str] | None = Field(None, description="Arm Vela settings of an Ethos-U NPU: accelerator, "
                                        "system_config, memory_mode, config (edgeslim.litert.vela)")

    def pj_per_mac(self, precision: str) -> float:
        p = "fp32" if precision not in HOROWITZ_45NM_PJ_PER_MAC else precision
        return self.energy.pj_per_mac.get(p, HOROWITZ_45NM_PJ_PER_MAC[p] * self.energy_scale)  # type: ignore[call-overload]

    def pj_per_byte(self, level: str) -> float:
        return self.energy.pj_per_byte.get(level, HOROWITZ_45NM_PJ_PER_BYTE[level] * self.energy_scale)  # type: ignore[call-overload]

    def macs_per_second(self, precision: str) -> float:
        """Sustained MAC rate (MACs/s) = clock x cores x peak MACs/cycle x efficiency; falls back to fp32."""
        per_cycle = self.peak_macs_per_cycle.get(precision) or self.peak_macs_per_cycle.get("fp32")  # type: ignore[call-overload]
        if not per_cycle:
            raise EdgeslimError(f"device {self.name}: no peak_macs_per_cycle for {precision} or fp32")
        return self.clock_mhz * 1e6 * self.cores * per_cycle * self.efficiency


HOST_RUNTIME = "onnxruntime"


def runtime_of(device: Device) -> str:
    """The inference runtime of `device`: its profile's `runtime`, else TFLite Micro on a microcontroller
    and ONNX Runtime elsewhere."""
    return device.runtime or ("tflite-micro" if device.kind == "mcu" else HOST_RUNTIME)


def host_arch() -> str:
    """This machine's CPU architecture, normalised ("x86_64", "aarch64", ...)."""
    import platform

    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def timed_here(device: Device) -> bool:
    """True when timing on this host answers speed questions for `device`: it is the host, or a CPU profile
    running ONNX Runtime on this machine's architecture (`quant.device_choice` makes the decisions)."""
    if device.name == "host":
        return True
    return (device.kind == "cpu" and runtime_of(device) == HOST_RUNTIME
            and bool(device.arch) and device.arch.lower() == host_arch())


def builtin_devices() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


# User profiles loaded by path in this process, by name: a run records its device's name (results.json,
# stage metrics) and later steps (the verdict, the report, resume) find the user's file by it.
_USER: dict[str, Path] = {}
DEVICE_PATH_ENV = "EDGESLIM_DEVICE_PATH"  # os.pathsep-separated folders searched for NAME.yaml
TEMPLATE = HERE / "board.yaml.template"
# What a runtime needs besides the model when a user profile leaves it out: the built-in profiles' figures
# (TFLite Micro + CMSIS-NN on a Cortex-M; TFLite on a Linux board; JetPack on a GPU board). Bytes.
RUNTIME_DEFAULTS = {"mcu": (81920, 16384), "cpu": (10485760, 33554432), "gpu": (1073741824, 536870912)}


def _find(name: str) -> Path | None:
    """The file of the profile called `name`: loaded earlier by path in this process (the name a run recorded
    is that file's, even when it shadows a built-in), built-in, or NAME.yaml in a folder of $EDGESLIM_DEVICE_PATH."""
    import os

    key = name.lower()
    for cand in [_USER.get(key), HERE / f"{key}.yaml"] + [
            Path(d) / f"{name}{ext}" for d in os.environ.get(DEVICE_PATH_ENV, "").split(os.pathsep) if d
            for ext in (".yaml", ".yml")]:
        if cand is not None and cand.is_file():
            return cand
    return None


def load_device(name_or_path: str | Path | Device) -> Device:
    """A profile by name (built-in, a user file loaded earlier in this process, or NAME.yaml in a folder of
    $EDGESLIM_DEVICE_PATH) or a user YAML file by path (`edgeslim devices --template` prints one)."""
    if isinstance(name_or_path, Device):
        return name_or_path
    s = str(name_or_path)
    path = Path(s)
    if not (s.endswith((".yaml", ".yml")) or path.is_file()):
        found = _find(s)
        if found is None:
            raise EdgeslimError(f"unknown device '{s}'; built-in devices: {choices(builtin_devices())} "
                                f"(or pass a path to a device YAML, or put {s}.yaml in a folder of "
                                f"${DEVICE_PATH_ENV}; `edgeslim devices --template` prints one)")
        path = found
    if not path.is_file():
        raise EdgeslimError(f"{path}: device file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise EdgeslimError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise EdgeslimError(f"{path}: a device file must be a mapping of keys (name, clock_mhz, ...)")
    data.setdefault("name", path.stem)
    builtin = path.resolve().parent == HERE
    if builtin and path.stem == "host":
        data.update(_detect_host())
    warn = [] if builtin else _runtime_defaults(data)
    if not builtin and str(data["name"]).lower() in builtin_devices():
        warn.append(f"its name '{data['name']}' is a built-in profile's: in this process that name now means this file")
    try:
        dev = Device(**data)
    except ValidationError as e:
        raise EdgeslimError(f"{path}: {_problems(e)}") from None
    if not builtin:
        if _USER.get(dev.name.lower()) != path.resolve():
            for w in warn:  # once per file and process
                print(f"warning: {path}: {w}", file=sys.stderr)
        _USER[dev.name.lower()] = path.resolve()
    return dev


def _runtime_defaults(data: dict) -> list[str]:
    """Fill the runtime's flash and RAM a user profile leaves out with the figures of its kind (never 0:
    that would make every verdict optimistic); one warning per key filled."""
    kind = data.get("kind", "cpu")
    if kind not in RUNTIME_DEFAULTS:
        return []
    out = []
    for key, val in zip(("runtime_flash_bytes", "runtime_ram_bytes"), RUNTIME_DEFAULTS[kind]):
        if key not in data:
            data[key] = val
            out.append(f"no '{key}': assuming {val:,} bytes (the built-in {kind} profiles' runtime); "
                       "set it to your runtime's figure")
    return out


def _problems(e: ValidationError) -> str:
    """Every problem of a profile in one line: missing keys (with what they mean), then wrong values."""
    missing, wrong = [], []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "missing":
            f = Device.model_fields.get(str(err["loc"][0]))
            missing.append(f"'{loc}'" + (f" ({f.description})" if f is not None and f.description else ""))
        else:
            wrong.append(f"key '{loc}': {err['msg']}")
    parts = ([f"missing key{'s' if len(missing) > 1 else ''} " + ", ".join(missing)] if missing else []) + wrong
    return "; ".join(parts) + " (`edgeslim devices --template` prints a commented profile)"


def template() -> str:
    """A commented device profile to copy and edit (`edgeslim devices --template`)."""
    return TEMPLATE.read_text()


def _detect_host() -> dict:
    """Clock (MHz), cores and RAM/disk bytes of this machine, where Linux tells them; {} otherwise."""
    import os
    import shutil

    found: dict = {"cores": os.cpu_count() or 1}
    try:
        info = Path("/proc/cpuinfo").read_text()
        mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
        if mhz:
            found["clock_mhz"] = round(max(mhz))
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        found["sram_bytes"] = found["dram_bytes"] = int(mem[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        found["flash_bytes"] = shutil.disk_usage(Path.cwd()).free
    except OSError:
        pass
    return found


DEFAULT_DEVICE = "host"

__all__ = ["Calibration", "Device", "EnergyCosts", "load_device", "builtin_devices", "template", "DEFAULT_DEVICE",
           "HOST_RUNTIME", "host_arch", "runtime_of", "timed_here"]
