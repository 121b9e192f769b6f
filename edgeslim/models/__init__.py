"""Model zoo, architecture specs and safetensors I/O."""

from edgeslim.models.io import load_model, save_model
from edgeslim.models.spec import build_model, make_spec
from edgeslim.models.zoo import ZOO

__all__ = ["ZOO", "build_model", "make_spec", "load_model", "save_model"]
