"""benchmarks/peers.py's structured-fast job (issue 27) is registered, and its peers are fine-tuned for what
the recipe gives its pick (full fine-tune + screening), not the recipe's timing rounds."""

from __future__ import annotations

import sys
from pathlib import Path

import edgeslim
from edgeslim.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import peers  # noqa: E402
import peers_structured as ps  # noqa: E402


def test_structured_fast_job_is_registered_with_the_picks_budget() -> None:
    assert ps.JOB in peers.ALL_JOBS and ps.JOB not in peers.QUICK_JOBS
    recipe = load_recipe(Path(edgeslim.__file__).parent / "recipes" / f"{ps.RECIPE}.yaml")
    ft = ps.budget(recipe)
    assert (ft.epochs, ft.lr) == (30 + 5, 0.002)
    assert peers.finetune_budget(recipe).epochs != ft.epochs  # the generic budget would count timing rounds
