"""`ExportOptions`: how a model becomes a deployable file (`api.export`, `deploy.artifacts.export_model`, the
`.tflite` path `litert.export.tflite_export` / `litert.convert.to_tflite`), one pydantic object instead of a
keyword list spelled at every layer. It sits here, the lowest layer that exports (ONNX INT8 reads it too); it
imports no LiteRT package. What is exported (model, format, file, task, inputs, shapes) stays in the calls'
own parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ExportOptions(BaseModel):
    """`int8`: full-integer INT8 (`.tflite`) or QDQ s8s8 (ONNX), calibrated on `calibration_samples` of the
    task's training inputs (else of `--inputs`), weights `per_channel`; `seed`: which samples. `force`: write a
    `.tflite` that misses the parity check (its summary's `parity_failed` says why). `min_arena` (INT8
    `.tflite`): rewrite it for a smaller TFLite Micro arena, patch halos recomputing at most `max_recompute` of
    the model's MACs (a fraction). `micro`: also run the file in TFLite Micro (arena, agreement). `device`: the
    profile the exported file's fit (and `min_arena`'s target) is for. `trust_pickle`: load a `.pt` pickle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    int8: bool = False
    calibration_samples: int = Field(256, ge=1)
    per_channel: bool = True
    seed: int = 0
    force: bool = False
    min_arena: bool = False
    max_recompute: float = Field(0.2, ge=0.0, le=10.0)
    micro: bool = True
    device: str | None = None
    trust_pickle: bool = False

    def __repr__(self) -> str:  # short: only what differs from the defaults
        from edgeslim.configs import short_repr

        return short_repr(self)


def export_options(options: ExportOptions | None, fields: dict[str, Any]) -> ExportOptions:
    """`options` with `fields` (ExportOptions field names) applied on top; a bad one is one `EdgeslimError` line."""
    from edgeslim.configs import with_fields

    return with_fields(ExportOptions, "export", options, fields)
