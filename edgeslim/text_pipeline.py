"""Run a recipe on a text encoder (a Hugging Face folder): the one stage loop (`edgeslim.run.loop`) with the
text-encoder handler (`edgeslim.run.text`: stage layout, fidelity metrics, the interleaved timing of all
stages at the end). The folder is locked while the run works in it (`runlock`); the device (`--device`, the
recipe's `device:`, EDGESLIM_DEVICE) is recorded in run.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim import accelerator, runlock
from edgeslim.nlp.encoder import load_encoder
from edgeslim.nlp.text import TextTask
from edgeslim.recipe import Recipe, check_kinds
from edgeslim.run import RunOptions, run_options, run_stages
from edgeslim.run.text import TextHandler


def check_text_recipe(recipe: Recipe) -> None:
    """Every pass of `recipe` must take text encoders (one line naming the recipe line otherwise)."""
    check_kinds(recipe.steps, recipe.source, "text")


def run_text_recipe(recipe: Recipe, model_dir: Path, task: TextTask, out: Path, options: RunOptions | None = None, *,
                    task_spec: str = "", **fields: Any) -> dict:
    """Run (or resume) `recipe` on the encoder in `model_dir` with `options` (`RunOptions`, or its fields as
    keywords); returns the results dict."""
    check_text_recipe(recipe)
    out = Path(out)
    model_dir = Path(model_dir)
    o = run_options(options, fields).resolved(recipe.device)  # an unknown device is one line
    original = load_encoder(model_dir)  # loads and checks the folder before the run folder is claimed
    ident = {"model": str(model_dir.resolve()), "task": task_spec or task.name, "recipe_digest": recipe.digest,
             "seed": o.seed, "kind": "text-encoder"}
    assert o.device is not None
    with runlock.claimed(out, ident, o.force, o.device, {"accelerator": accelerator.describe()}):
        return run_stages(TextHandler({}, o.threads), recipe, original, task, out, ident, o)


__all__ = ["run_text_recipe", "check_text_recipe"]
