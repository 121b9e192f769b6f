"""Pareto front and hypervolume over a study's feasible trials.

Values are turned into "smaller is better" (maximised objectives negated) before both. The
hypervolume is Optuna's exact implementation (WFG), measured against a fixed reference point so two
searches (guided vs random) are compared on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_loss(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, float).reshape(-1, len(directions)) * sign


def front_indices(values: np.ndarray, directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated rows (duplicates: the first one is kept)."""
    loss = as_loss(values, directions)
    keep: list[int] = []
    for i, p in enumerate(loss):
        dominated = np.any(np.all(loss <= p, axis=1) & np.any(loss < p, axis=1))
        duplicate = any(np.array_equal(loss[j], p) for j in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return keep


def hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Volume dominated by `values` and bounded by `reference` (given in the objectives' own units);
    points that do not beat the reference in every objective add nothing."""
    from optuna._hypervolume import compute_hypervolume

    loss = as_loss(values, directions)
    ref = as_loss(np.asarray(reference, float), directions)[0]
    if len(loss) == 0:
        return 0.0
    inside = loss[np.all(loss < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref))


def reference_point(directions: Sequence[str], baseline: Sequence[float]) -> list[float]:
    """A reference every useful candidate beats: 0 for maximised objectives (accuracy in %), and 1.1x
    the baseline's value for minimised ones (a compressed model should not cost more than that)."""
    return [0.0 if d == "maximize" else 1.1 * float(b) for d, b in zip(directions, baseline)]
