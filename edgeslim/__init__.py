"""edgeslim: compress neural networks for edge devices and prove it with measurements."""

from importlib import metadata as _metadata

from edgeslim.errors import EdgeslimError

try:  # the installed distribution's version; a source checkout without an install falls back to pyproject's
    __version__ = _metadata.version("edgeslim")
except _metadata.PackageNotFoundError:
    __version__ = "0.1.0"
__all__ = ["EdgeslimError", "__version__"]
