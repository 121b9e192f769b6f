"""Energy: the analytic model's arithmetic, the RAPL reader on a fake powercap tree (with wrap),
the window API's labelling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeslim.devices import Device, EnergyCosts, load_device
from edgeslim.energy import window
from edgeslim.measure import rapl
from edgeslim.measure.energy import OP_FRACTION_OF_MAC, estimate_energy, estimate_from_counts
from edgeslim.measure.onnx_counts import GraphCount, LayerCount


def toy_device(**kw) -> Device:
    d = dict(name="toy", clock_mhz=1, flash_bytes=1000, sram_bytes=1000, weights_in="flash",
             activations_in="sram", peak_macs_per_cycle={"int8": 1.0, "fp32": 0.5}, efficiency=1.0,
             active_power_mw=1.0,
             energy=EnergyCosts(pj_per_mac={"int8": 1.0, "fp32": 10.0}, pj_per_byte={"flash": 2.0, "sram": 1.0}))
    d.update(kw)
    return Device(**d)


def test_energy_arithmetic():
    counts = GraphCount([LayerCount("conv", "Conv", "int8", macs=1000, ops=0, weight_bytes=100,
                                    act_in_bytes=50, act_out_bytes=20)])
    e = estimate_from_counts(counts, toy_device())
    assert e.compute_mj == pytest.approx(1000 * 1.0 * 1e-9)  # 1000 pJ
    assert e.memory_mj == pytest.approx((100 * 2 + 70 * 1) * 1e-9)  # 270 pJ
    assert e.latency_ms == pytest.approx(1.0)  # 1000 MACs at 1 MAC/cycle, 1 MHz
    assert e.static_mj == pytest.approx(1e-3)  # 1 mW x 1 ms
    assert e.mj == pytest.approx(1e-3 + 1270e-9)
    assert e.method == "estimated:uncalibrated@toy"  # no calibration block


def test_energy_precision_and_ops():
    counts = GraphCount([
        LayerCount("fc", "Gemm", "fp32", macs=100, ops=0, weight_bytes=0, act_in_bytes=0, act_out_bytes=0),
        LayerCount("pool", "MaxPool", "fp32", macs=0, ops=50, weight_bytes=0, act_in_bytes=0, act_out_bytes=0),
    ])
    e = estimate_from_counts(counts, toy_device())
    assert e.compute_mj == pytest.approx((100 * 10 + 50 * 10 * OP_FRACTION_OF_MAC) * 1e-9)
    assert e.latency_ms == pytest.approx(150 / 0.5e6 * 1e3)  # fp32 peak 0.5 MAC/cycle
    assert [r["name"] for r in e.breakdown] == ["fc", "pool"]


def test_horowitz_defaults_scaled():
    d = toy_device(energy=EnergyCosts(), energy_scale=0.5)
    assert d.pj_per_mac("int8") == pytest.approx(0.23 * 0.5)
    assert d.pj_per_mac("fp32") == pytest.approx(4.6 * 0.5)
    assert d.pj_per_byte("dram") == pytest.approx(640 / 4 * 0.5)
    assert d.pj_per_byte("sram") == pytest.approx(5 / 4 * 0.5)


def test_int8_estimate_below_fp32(tmp_path):
    from test_deploy_planner import chain, qdq

    m4 = load_device("cortex-m4")
    e_q = estimate_energy(qdq(), m4)
    assert e_q.macs_by_precision == {"int8": 5000}
    e_f = estimate_energy(chain(), m4)
    assert e_f.macs_by_precision == {"fp32": 15000}
    # per MAC, int8 is cheaper in both the dynamic and the time (static) term on the M4 profile
    assert e_q.mj / 5000 < e_f.mj / 15000


def fake_powercap(root: Path, pkg_uj: int, dram_uj: int, max_uj: int = 1000_000) -> None:
    for d, name, val in (("intel-rapl:0", "package-0", pkg_uj), ("intel-rapl:0:0", "core", 5),
                         ("intel-rapl:0:1", "dram", dram_uj)):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "name").write_text(name + "\n")
        (root / d / "energy_uj").write_text(f"{val}\n")
        (root / d / "max_energy_range_uj").write_text(f"{max_uj}\n")


def set_uj(root: Path, d: str, val: int) -> None:
    tmp = root / d / ".energy_uj.tmp"  # atomic, like sysfs: a reader never sees a half-written file
    tmp.write_text(f"{val}\n")
    tmp.replace(root / d / "energy_uj")


def test_rapl_domains_skip_core(tmp_path):
    fake_powercap(tmp_path, 10, 20)
    names = [d.name for d in rapl.domains(tmp_path)]
    assert names == ["package-0", "package-0/dram"]
    assert rapl.available(tmp_path) and not rapl.available(tmp_path / "nothing")


def test_rapl_delta_wraps():
    assert rapl.delta_uj(100, 250, 1000) == 150
    assert rapl.delta_uj(900, 50, 1000) == 150  # wrapped: 100 to the top + 50


def test_window_with_fake_rapl_and_wrap(tmp_path):
    fake_powercap(tmp_path, pkg_uj=999_000, dram_uj=100)
    with window("w", powercap_root=tmp_path, nvml=False) as w:
        set_uj(tmp_path, "intel-rapl:0", 2_000)  # wrapped past 1_000_000: 1_000 + 2_000 uJ
        set_uj(tmp_path, "intel-rapl:0:1", 600)  # 500 uJ
    assert w.method == "measured:rapl"
    assert w.by_domain == {"package-0": pytest.approx(3e-3), "package-0/dram": pytest.approx(5e-4)}
    assert w.energy_j == pytest.approx(3.5e-3)
    assert w.energy_mj == pytest.approx(3.5)
    assert w.seconds > 0 and w.average_power_w is not None


def test_window_unavailable_is_labelled(tmp_path):
    with window("w", powercap_root=tmp_path / "none", nvml=False) as w:
        np.ones(10).sum()
    assert w.energy_j is None and w.method == "unavailable" and "RAPL" in w.note
    assert w.seconds >= 0


def test_unreadable_counter_skipped(tmp_path):
    fake_powercap(tmp_path, 10, 20)
    (tmp_path / "intel-rapl:0" / "energy_uj").unlink()
    assert [d.name for d in rapl.domains(tmp_path)] == ["package-0/dram"]


class FakeNvml:
    """Stands in for pynvml: one GPU whose energy counter (mJ) the test advances."""

    def __init__(self) -> None:
        self.mj = 1_000

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 (pynvml's names)
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:  # noqa: N802
        return f"h{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:  # noqa: N802
        return self.mj


def test_window_nvml_with_fake_driver(monkeypatch, tmp_path):
    from edgeslim.measure import nvml

    fake = FakeNvml()
    monkeypatch.setattr(nvml, "_nvml", lambda: fake)
    with window("gpu", powercap_root=tmp_path / "none") as w:
        fake.mj += 2_500
    assert w.method == "measured:nvml" and w.by_domain == {"gpu0": pytest.approx(2.5)}
    assert w.energy_j == pytest.approx(2.5)


def test_optional_backends_skip_cleanly(tmp_path):
    from edgeslim.deploy.compile import available_backends
    from edgeslim.measure.latency import openvino_latency

    b = available_backends()
    assert b["onnxruntime"] is True
    if not b["openvino"]:
        assert openvino_latency(tmp_path / "missing.onnx") is None


def test_measure_energy_through_fake_rapl(tmp_path):
    import threading

    import onnx
    from test_deploy_planner import chain

    from edgeslim.measure.energy import measure_energy
    from edgeslim.measure.latency import ort_runner
    from edgeslim.onnxkit.session import session

    path = tmp_path / "c.onnx"
    onnx.save(chain(), str(path))
    sess = session(path)
    run = ort_runner(sess, {sess.get_inputs()[0].name: np.zeros((1, 100), np.float32)})
    assert measure_energy(run, powercap_root=tmp_path / "none") is None  # no counters: caller estimates
    root = tmp_path / "pc"
    fake_powercap(root, pkg_uj=0, dram_uj=0)
    stop = threading.Event()

    def tick() -> None:  # a 1 W package: +1000 uJ per ms
        t = 0
        while not stop.is_set():
            t += 1000
            set_uj(root, "intel-rapl:0", t % 1_000_000)
            stop.wait(0.001)

    th = threading.Thread(target=tick)
    th.start()
    try:
        e = measure_energy(run, runs=50, min_seconds=0.3, powercap_root=root)
    finally:
        stop.set()
        th.join()
    assert e is not None and e.method == "measured:rapl" and e.mj > 0 and e.latency_ms
