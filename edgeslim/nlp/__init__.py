"""Text encoders: local Hugging Face folders (e.g. all-MiniLM-L6-v2) compressed and measured by
sentence-embedding fidelity.

The text task and its loaders (`edgeslim.nlp.text`) and the fidelity metrics (`edgeslim.nlp.fidelity`)
need only numpy; everything that builds or runs the PyTorch model needs the `nlp` extra
(`transformers`, `tokenizers`), imported lazily through `require_transformers()`. Nothing is ever downloaded:
folders are read with `local_files_only` and the hub is switched off.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from edgeslim.errors import EdgeslimError

INSTALL_HINT = "pip install -e '.[nlp]'"


def require_transformers() -> ModuleType:
    """Import `transformers` quietly and offline, or raise one line saying how to install it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Optional packages transformers probes at import (e.g. torchao from the litert extra) log noise
    # about kernels this CPU build cannot load; it says nothing about the text encoder.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import tokenizers  # noqa: F401
        import transformers
    except ImportError:
        raise EdgeslimError(f"text encoders need transformers and tokenizers: {INSTALL_HINT}") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def is_text_encoder_folder(path: object) -> bool:
    """A Hugging Face model folder (`config.json` with a `model_type`) rather than an edgeslim one."""
    import json
    from pathlib import Path

    p = Path(str(path))
    if not (p.is_dir() and (p / "config.json").is_file()) or (p / "spec.json").exists():
        return False
    try:
        return "model_type" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
