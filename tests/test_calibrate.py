"""The cortex-m4 profile's calibration on MLPerf Tiny: one fit on all points, reproducible, leave-one-out recorded."""

from __future__ import annotations

import pytest

from edgeslim.devices import load_device
from edgeslim.devices.calibrate import MLPERF_TINY_V05_L4R5, check, curve_fit, reference_counts
from edgeslim.measure.onnx_counts import GraphCount, LayerCount


def test_fit_recovers_a_known_profile() -> None:
    """Estimates from a known profile, then fit from the a-priori one: the fit returns the known values."""
    from edgeslim.devices.calibrate import Published
    from edgeslim.measure.energy import estimate_from_counts

    counts = GraphCount([LayerCount("conv", "Conv", "int8", 5_000_000, 10_000, 20_000, 4_000, 4_000)])
    truth = load_device("cortex-m4").model_copy(update={"efficiency": 0.05, "active_power_mw": 33.0})
    e = estimate_from_counts(counts, truth)
    ref = Published("x", "synthetic", "resnet8", (3, 32, 32), 10, e.latency_ms or 0, e.mj)
    got = curve_fit(truth.model_copy(update={"efficiency": 0.25, "active_power_mw": 40.0}), counts, ref)
    assert got.efficiency == pytest.approx(0.05, rel=1e-3)
    assert got.active_power_mw == pytest.approx(33.0, rel=1e-3)


@pytest.fixture(scope="module")
def counts() -> dict[str, GraphCount]:
    return reference_counts(MLPERF_TINY_V05_L4R5)


def test_zoo_matches_the_mlperf_tiny_geometries(counts: dict[str, GraphCount]) -> None:
    # published MAC counts of the reference networks: ResNet-8 12.5 M, DS-CNN 2.7 M, MobileNetV1 0.25 7.5 M,
    # FC autoencoder 0.26 M
    got = {k: c.macs / 1e6 for k, c in counts.items()}
    assert got["ic"] == pytest.approx(12.5, rel=0.01) and got["kws"] == pytest.approx(2.66, rel=0.02)
    assert got["vww"] == pytest.approx(7.49, rel=0.01) and got["ad"] == pytest.approx(0.264, rel=0.01)
    assert all(c.macs_by_precision().get("int8", 0) > 0.95 * c.macs for c in counts.values())


def test_recorded_calibration_reproduces_and_holds_out(counts: dict[str, GraphCount]) -> None:
    from edgeslim.devices.calibrate import curve_fit_all, leave_one_out, loo_table

    m4 = load_device("cortex-m4")
    assert m4.calibration is not None and m4.calibration.fitted["efficiency"] == m4.efficiency
    prior = m4.model_copy(update=m4.calibration.a_priori)
    refit = curve_fit_all(prior, counts, MLPERF_TINY_V05_L4R5)  # the profile keeps the fit on all four points
    assert refit.efficiency == pytest.approx(m4.efficiency, rel=1e-3)
    assert refit.active_power_mw == pytest.approx(m4.active_power_mw, rel=1e-3)
    # leave-one-out: each point predicted by the fit on the other three; the profile records the range
    loo = {r["key"]: r for r in leave_one_out(prior, counts, MLPERF_TINY_V05_L4R5)}
    assert all(r["fitted_on"] == [k for k in ("ic", "kws", "vww", "ad") if k != key] for key, r in loo.items())
    ratios = [r["energy_ratio"] for r in loo.values()]
    assert [round(min(ratios), 2), round(max(ratios), 2)] == m4.calibration.loo_energy_ratio == [0.66, 1.78]
    assert loo["ad"]["energy_ratio"] == pytest.approx(1.78, abs=0.01)  # the worst: the tiny autoencoder
    assert len(loo_table(list(loo.values()))) == 2 + 4
    rows = {r["key"]: r for r in check(m4, counts, MLPERF_TINY_V05_L4R5)}
    for key in ("ic", "kws", "vww", "ad"):  # the all-points fit's own error on each point: within 1.6x
        assert 1 / 1.6 <= rows[key]["energy_ratio"] <= 1.6, rows[key]
    # the a-priori profile was 3.5-5x too low on the convolutional networks
    assert all(r["energy_ratio"] < 0.45 for r in check(prior, counts, MLPERF_TINY_V05_L4R5))


def test_labels_follow_the_calibration_block() -> None:
    from edgeslim.measure.energy import estimate_from_counts, estimate_label

    m4 = load_device("cortex-m4")
    int8 = GraphCount([LayerCount("conv", "Conv", "int8", 1000, 0, 100, 50, 20)])
    fp32 = GraphCount([LayerCount("conv", "Conv", "fp32", 1000, 0, 100, 50, 20)])
    assert estimate_from_counts(int8, m4).method == "estimated:calibrated@cortex-m4 (LOO error 0.66x-1.78x)"
    assert estimate_label(m4, fp32).endswith("(uncalibrated precision: fp32)")
    # a profile named cortex-m4 without a calibration block is not calibrated; another name with one is
    assert estimate_label(m4.model_copy(update={"calibration": None})) == "estimated:uncalibrated@cortex-m4"
    other = m4.model_copy(update={"name": "my-board"})
    assert estimate_label(other, int8).startswith("estimated:calibrated@my-board")
    assert estimate_label(load_device("cortex-a72"), int8) == "estimated:uncalibrated@cortex-a72"
