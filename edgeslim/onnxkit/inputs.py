"""Model inputs: what they are, and feeds for calibration and checks (from an .npz, or synthetic).

An `.npz` holds one array per model input name. An array with one more axis than its input holds one
sample per index on axis 0; an array of the input's rank whose first dim is dynamic (or 1) is split
into batch-1 samples along axis 0; anything else (a scalar like a sample rate, a state tensor) is one
value reused for every sample.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeslim.errors import EdgeslimError

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None  # int fixed, str named, None unknown; None = rank unknown

    def show(self) -> str:
        if self.dims is None:
            return "(unknown rank)"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Real inputs (graph inputs that are not initializers), in order."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            raise EdgeslimError(f"model input '{v.name}' is not a tensor (sequences/maps are not supported)")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims: tuple[int | str | None, ...] | None = None
        if tt.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                else (d.dim_param or None) for d in tt.shape.dim
            )
        specs.append(InputSpec(v.name, dtype, dims))
    return specs


def parse_shapes(items: list[str], specs: list[InputSpec]) -> dict[str, tuple[int, ...]]:
    """`--shape name=1,3,224,224` options -> {name: shape}; names must be model inputs."""
    names = {s.name for s in specs}
    out: dict[str, tuple[int, ...]] = {}
    for it in items:
        name, sep, val = it.rpartition("=")
        try:
            shape = tuple(int(v) for v in val.split(",")) if val.strip() else ()
            ok = bool(sep) and all(v >= 0 for v in shape)
        except ValueError:
            ok = False
        if not ok:
            raise EdgeslimError(f"--shape {it!r}: expected NAME=D0,D1,... with integer dims, e.g. x=1,3,224,224")
        if name not in names:
            raise EdgeslimError(f"--shape {it!r}: model has no input '{name}' (inputs: {', '.join(sorted(names))})")
        out[name] = shape
    return out


def _fits(spec: InputSpec, shape: tuple[int, ...]) -> bool:
    if spec.dims is None:
        return True
    return len(shape) == len(spec.dims) and all(
        not isinstance(d, int) or d == s for d, s in zip(spec.dims, shape)
    )


def resolve_shape(spec: InputSpec, override: tuple[int, ...] | None) -> tuple[int, ...]:
    """Concrete shape for synthetic data: --shape wins; an unknown leading dim is batch 1; else ask."""
    example = f"--shape {spec.name}=" + ",".join(
        str(d) if isinstance(d, int) else ("1" if i == 0 else "N") for i, d in enumerate(spec.dims or ("N",))
    )
    if override is not None:
        if not _fits(spec, override):
            raise EdgeslimError(f"--shape {spec.name}={','.join(map(str, override))} does not fit the model's "
                                f"declared shape {spec.show()} for input '{spec.name}'")
        return override
    if spec.dims is None:
        raise EdgeslimError(f"model input '{spec.name}' has no declared shape; give {example} (or --calib data)")
    dims = [d if isinstance(d, int) else (1 if i == 0 else None) for i, d in enumerate(spec.dims)]
    if any(d is None for d in dims):
        raise EdgeslimError(
            f"model input '{spec.name}' has shape {spec.show()} that cannot be inferred; give {example} "
            "with real sizes (or --calib data)"
        )
    return tuple(int(d) for d in dims if d is not None)


def synthetic_feeds(
    specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], n: int, seed: int
) -> tuple[list[Feed], list[str]]:
    """`n` random feeds (float: N(0,1); integer: 0; bool: False) and warnings about what was guessed."""
    rng = np.random.default_rng(seed)
    warns = []
    feeds: list[Feed] = [{} for _ in range(n)]
    for s in specs:
        shape = resolve_shape(s, shapes.get(s.name))
        if s.dtype.kind != "f":
            warns.append(f"input '{s.name}' ({s.dtype}) filled with zeros: give real values with --calib")
        for f in feeds:
            if s.dtype.kind == "f":
                f[s.name] = rng.standard_normal(shape).astype(s.dtype)
            else:
                f[s.name] = np.zeros(shape, s.dtype)
    return feeds, warns


def load_npz(path: str | Path, specs: list[InputSpec]) -> list[Feed]:
    """Feeds from an .npz with one array per input name (see module docstring for the sample layout)."""
    p = Path(path)
    if not p.is_file():
        raise EdgeslimError(f"{p}: no such calibration file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise EdgeslimError(f"{p}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else e})") from None
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise EdgeslimError(
            f"{p}: array names must match the model inputs ({', '.join(names)}); "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "") + (f"unexpected {', '.join(extra)}" if extra else "")
        )
    per: dict[str, list[np.ndarray]] = {}
    for s in specs:
        a = arrays[s.name]
        if a.dtype.kind not in "biuf":
            raise EdgeslimError(f"{p}: array '{s.name}' has dtype {a.dtype}; input '{s.name}' needs {s.dtype}")
        if s.dtype.kind in "biu" and a.dtype.kind == "f":
            raise EdgeslimError(f"{p}: array '{s.name}' is float but input '{s.name}' is {s.dtype}")
        a = a.astype(s.dtype)
        if a.size == 0:
            raise EdgeslimError(f"{p}: array '{s.name}' is empty (shape {a.shape}); give at least one sample")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise EdgeslimError(f"{p}: array '{s.name}' contains NaN or infinite values")
        rank = len(s.dims) if s.dims is not None else a.ndim
        lead = s.dims[0] if s.dims else None
        if a.ndim == rank + 1:
            samples = [a[i] for i in range(a.shape[0])]
        elif a.ndim == rank and rank >= 1 and (lead is None or isinstance(lead, str) or lead == 1) \
                and a.shape[0] > 1:
            samples = [a[i : i + 1] for i in range(a.shape[0])]
        else:
            samples = [a]
        bad = next((x for x in samples if not _fits(s, x.shape)), None)
        if bad is not None:
            raise EdgeslimError(f"{p}: array '{s.name}' has shape {a.shape} (sample shape {bad.shape}) but model "
                                f"input '{s.name}' expects {s.show()}")
        per[s.name] = samples
    counts = {len(v) for v in per.values() if len(v) > 1}
    if len(counts) > 1:
        raise EdgeslimError(f"{p}: arrays hold different sample counts "
                            f"({', '.join(f'{k}: {len(v)}' for k, v in per.items())})")
    n = counts.pop() if counts else 1
    return [{k: v[i] if len(v) > 1 else v[0] for k, v in per.items()} for i in range(n)]


def sample_shape(p: Path) -> tuple[int, ...]:
    """The per-sample shape (batch dimension dropped) of the first input of the ONNX file `p`, checked as
    an untrusted file first (`edgeslim.untrusted`). Refused in one line: no input, a fixed batch above 1,
    unknown dimensions."""
    from edgeslim.untrusted import check_onnx_file

    g = check_onnx_file(p).graph  # corrupt files and external data outside the folder: one line
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if not inputs:
        raise EdgeslimError(f"{p}: the model has no inputs to feed")
    batch = inputs[0].type.tensor_type.shape.dim[:1]
    if batch and batch[0].HasField("dim_value") and batch[0].dim_value > 1:
        raise EdgeslimError(f"{p}: input '{inputs[0].name}' has a fixed batch of {batch[0].dim_value}; measure "
                            "runs one sample at a time: export the model with batch 1 or a dynamic batch")
    shape = tuple(d.dim_value for d in inputs[0].type.tensor_type.shape.dim[1:])
    if not all(shape):
        raise EdgeslimError(f"{p}: input '{inputs[0].name}' has unknown dimensions {shape}")
    return shape
