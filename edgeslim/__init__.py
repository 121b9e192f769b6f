"""edgeslim: compress neural networks for edge devices and prove it with measurements."""

from edgeslim.errors import EdgeslimError

__version__ = "0.1.0"
__all__ = ["EdgeslimError", "__version__"]
