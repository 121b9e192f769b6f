"""search picks on validation and reports test: `pick_best` reads only the validation figures, `final_entry`
keeps both, and the pick differs from what the test split would have chosen."""

from __future__ import annotations

from edgeslim.search.final import final_entry, pick_best


def _m(acc: float, flash: int, e: float = 0.01) -> dict:
    return {"accuracy": acc, "flash_bytes": flash, "energy_mj": e, "arena_bytes": 100, "latency_ms": 1.0}


def test_best_is_the_validation_best_and_test_figures_are_reported() -> None:
    objectives = ["accuracy", "flash"]
    # trial 0: best on validation (0.96 vs 0.93), worse on test (0.90 vs 0.94); trial 1 the opposite
    rows = [{"number": n, "slot": n, "recipe": f"r{n}", "metrics": {}} for n in (0, 1)]
    val = [_m(0.96, 9000), _m(0.93, 9000)]
    test = [_m(0.90, 9000), _m(0.94, 9000)]
    base_val, base_test = 0.97, 0.95
    from edgeslim.search.constraints import Budget, measured_violations

    b = Budget(max_accuracy_drop=2.0)
    finals = [final_entry(r, objectives, v, t, measured_violations(v, base_val, b), measured_violations(t, base_test, b))
              for r, v, t in zip(rows, val, test)]
    assert [f["values"][0] for f in finals] == [96.0, 93.0] and [f["test_values"][0] for f in finals] == [90.0, 94.0]
    # feasibility on validation: trial 0 drops 1 point (ok), trial 1 drops 4 (not); on test it is the reverse
    assert [f["feasible"] for f in finals] == [True, False]
    assert [f["feasible_on_test"] for f in finals] == [False, True]
    best = pick_best(finals, objectives)
    assert best["accuracy"]["trial"] == 0 and best["flash"]["trial"] == 0
    assert best["accuracy"]["metrics"]["accuracy"] == 0.90  # what is reported: the test figure of the val pick
    # with both feasible, the pick is still the validation best although trial 1 is better on test
    finals = [final_entry(r, objectives, v, t, {}, {}) for r, v, t in zip(rows, val, test)]
    assert pick_best(finals, objectives)["accuracy"]["trial"] == 0
    assert max(finals, key=lambda f: f["test_values"][0])["trial"] == 1
