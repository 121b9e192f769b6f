"""Running a recipe: ONE stage loop (`run.loop.run_stages`) over model handlers, one per kind of model
(`run.handlers`: zoo folder; `run.pytorch`: a PyTorch program; `run.text`: a Hugging Face text encoder).
`edgeslim.pipeline` and `edgeslim.text_pipeline` are the entry points that pick a handler."""

from edgeslim.run.handlers import ModelHandler
from edgeslim.run.loop import RESUME, run_stages
from edgeslim.run.options import RunOptions, run_options

__all__ = ["ModelHandler", "RESUME", "RunOptions", "run_options", "run_stages"]
