"""Model zoo, architecture specs (with their replayable edits, e.g. `lowrank` factor layers), safetensors
I/O, parameter/MAC counts and the student builder."""

from edgeslim.models import lowrank  # noqa: F401  (registers the low-rank spec edits)
from edgeslim.models.io import load_model, save_model
from edgeslim.models.spec import build_model, make_spec
from edgeslim.models.zoo import ZOO

__all__ = ["ZOO", "build_model", "make_spec", "load_model", "save_model"]
