"""Model inputs: what they are, and feeds for calibration and checks (from an .npz, or synthetic).

An `.npz` holds one array per model input name. An array with one more axis than its input holds one
sample per index on axis 0; an array of the input's rank whose first dim is dynamic (or 1) is split
into batch-1 samples along axis 0; anything else (a scalar like a sample rate, a state tensor) is one
value reused for every sample.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.lazy import LazyFeeds, NpyMember

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


def _example(spec: InputSpec) -> str:
    """`--shape NAME=...` with the fixed dims filled in, the batch 1 and a placeholder for each other dim: its
    name when short (H, width), else D<axis>."""
    def place(i: int, d: int | str | None) -> str:
        if isinstance(d, int):
            return str(d)
        if i == 0:
            return "1"
        return d if d and len(d) <= 12 and d.isidentifier() else f"D{i}"

    return f"--shape {spec.name}=" + ",".join(place(i, d) for i, d in enumerate(spec.dims or ("N",)))


def dim_bindings(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], batch: int | None = None) -> dict[str, int]:
    """Sizes of named dims: from --shape overrides, and a named leading (batch) dim is `batch` (default 1).
    A name means the same size in every input (ONNX semantics), so `[B, 8]` ids bind B for a `[1, B, 16]` state."""
    bound: dict[str, int] = {}
    for s in specs:
        if s.dims and s.name in shapes and len(shapes[s.name]) == len(s.dims):
            bound.update({d: v for d, v in zip(s.dims, shapes[s.name]) if isinstance(d, str)})
    for s in specs:
        if s.dims and isinstance(s.dims[0], str):
            bound.setdefault(s.dims[0], batch or 1)
    return bound


def resolve_shape(spec: InputSpec, override: tuple[int, ...] | None, batch: int | None = None,
                  bound: dict[str, int] | None = None) -> tuple[int, ...]:
    """Concrete shape for synthetic data: --shape wins; a symbolic leading dim is the batch (`batch`, default 1);
    a fixed one is kept; a named dim bound elsewhere (`bound`, see `dim_bindings`) takes that size; any other
    symbolic dim is one line naming the input, the dim and the options."""
    if override is not None:
        if not _fits(spec, override):
            raise EdgeslimError(f"--shape {spec.name}={','.join(map(str, override))} does not fit the model's "
                                f"declared shape {spec.show()} for input '{spec.name}'")
        return override
    if spec.dims is None:
        raise EdgeslimError(f"model input '{spec.name}' has no declared shape; pass --inputs FILE.npz (one array "
                            f"per input) or {_example(spec)}")
    known = bound or {}
    dims = [d if isinstance(d, int) else known.get(d) if isinstance(d, str) and d in known
            else ((batch or 1) if i == 0 else None) for i, d in enumerate(spec.dims)]
    unknown = [i for i, d in enumerate(dims) if d is None]
    if unknown:
        i = unknown[0]
        name = spec.dims[i] or "?"
        raise EdgeslimError(
            f"model input '{spec.name}' has symbolic dimension '{name}' (axis {i} of {spec.show()}); pass "
            f"--inputs FILE.npz (one array per input) or {_example(spec)} with real sizes"
        )
    return tuple(int(d) for d in dims if d is not None)


# Names that say what an input holds; values for synthetic feeds follow them (module docstring).
_STATE = re.compile(r"(^|[._/])(h|c|hx|cx|h0|c0|hn|cn|state|states|hidden|cell|cache|past\w*|memory)(\d*)$",
                    re.IGNORECASE)
_RATE = re.compile(r"(^|[._/])(sr|rate|sample_?rate|sampling_?rate|fs)$", re.IGNORECASE)
DEFAULT_SAMPLE_RATE = 16000  # Hz: what speech models (VAD, ASR) most often take
TOKEN_ID_RANGE = (1, 100)    # synthetic token ids: small enough for any vocabulary


def synthetic_value(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One synthetic array for `spec` with values suited to its dtype and name, and a warning ("" if none):
    float data N(0,1); float state (h, c, state, hidden...) zeros; bool and *mask* ones; integer scalars a
    sample rate (sr, rate: 16000) or 1; token_type/segment ids zeros; other integers token ids in [1, 100)."""
    n, dt, low = spec.name, spec.dtype, spec.name.lower()
    if dt.kind == "f":
        if _STATE.search(n):
            return np.zeros(shape, dt), f"input '{n}' (state) starts from zeros"
        return rng.standard_normal(shape).astype(dt), ""
    if dt.kind == "b" or "mask" in low:
        return np.ones(shape, dt), f"input '{n}' ({dt}) set to ones (a mask)"
    if dt.kind in "iu" and len(shape) == 0:
        if _RATE.search(n):
            return np.array(DEFAULT_SAMPLE_RATE, dt), (f"scalar input '{n}' set to {DEFAULT_SAMPLE_RATE} (a sample "
                                                       "rate guess); give the real value with --inputs")
        return np.array(1, dt), f"scalar input '{n}' ({dt}) set to 1; give the real value with --inputs"
    if dt.kind in "iu":
        if "type" in low or "segment" in low:
            return np.zeros(shape, dt), f"input '{n}' ({dt}) set to zeros (segment ids)"
        lo, hi = TOKEN_ID_RANGE
        return rng.integers(lo, hi, size=shape).astype(dt), (
            f"input '{n}' ({dt}) filled with token ids in [{lo}, {hi}); give real values with --inputs")
    return np.zeros(shape, dt), f"input '{n}' ({dt}) filled with zeros; give real values with --inputs"


def synthetic_feeds(
    specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], n: int, seed: int, batch: int | None = None,
) -> tuple[list[Feed], list[str]]:
    """`n` synthetic feeds (values per `synthetic_value`) and the warnings about what was guessed."""
    rng = np.random.default_rng(seed)
    warns: list[str] = []
    feeds: list[Feed] = [{} for _ in range(n)]
    bound = dim_bindings(specs, shapes, batch)
    for s in specs:
        shape = resolve_shape(s, shapes.get(s.name), batch, bound)
        for i, f in enumerate(feeds):
            f[s.name], w = synthetic_value(s, shape, rng)
            if w and i == 0:
                warns.append(w)
    return feeds, warns


def read_npz(p: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles), or one EdgeslimError line."""
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise EdgeslimError(f"{p}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else e})") from None


def single_input_samples(path: str | Path, shape: tuple[int, ...], holder: str = "a model folder") -> np.ndarray:
    """Samples [N, *shape] (float32) from an .npz holding one array, for models with one float input (an
    edgeslim model folder, a .tflite file); one sample without the batch axis is taken as N = 1."""
    p = Path(path)
    arrays = read_npz(p)
    if len(arrays) != 1:
        raise EdgeslimError(f"{p}: {holder} has one input; the file holds {len(arrays)} arrays ({', '.join(arrays)})")
    name, a = next(iter(arrays.items()))
    if a.dtype.kind not in "fiu":
        raise EdgeslimError(f"{p}: array '{name}' has dtype {a.dtype}; the model takes float32")
    if tuple(a.shape) == shape:
        a = a[None]
    if tuple(a.shape[1:]) != shape:
        raise EdgeslimError(f"{p}: array '{name}' has shape {a.shape} but the model takes samples of shape "
                            f"{list(shape)} (give [N, {', '.join(map(str, shape))}])")
    return a.astype(np.float32)


def _members(p: Path) -> dict[str, NpyMember]:
    """Every array of an .npz, left on disk (`onnxkit.lazy`), or one EdgeslimError line."""
    try:
        with zipfile.ZipFile(p) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        return {n: NpyMember(p, n) for n in names}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise EdgeslimError(f"{p}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else e})") from None


def load_npz_feeds(path: str | Path, specs: list[InputSpec]) -> Sequence[Feed]:
    """Feeds from an .npz with one array per input name (see module docstring for the sample layout).
    The samples stay on disk and are read when a feed is indexed (`onnxkit.lazy.LazyFeeds`): memory does
    not grow with the number of samples in the file."""
    p = Path(path)
    if not p.is_file():
        raise EdgeslimError(f"{p}: no such inputs file (an .npz with one array per model input)")
    arrays = _members(p)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise EdgeslimError(
            f"{p}: array names must match the model inputs ({', '.join(names)}); "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "") + (f"unexpected {', '.join(extra)}" if extra else "")
        )
    parts: dict[str, tuple[NpyMember | np.ndarray, str, np.dtype]] = {}
    counts: dict[str, int] = {}
    for s in specs:
        a = arrays[s.name]
        if a.dtype.kind not in "biuf":
            raise EdgeslimError(f"{p}: array '{s.name}' has dtype {a.dtype}; input '{s.name}' needs {s.dtype}")
        if s.dtype.kind in "biu" and a.dtype.kind == "f":
            raise EdgeslimError(f"{p}: array '{s.name}' is float but input '{s.name}' is {s.dtype}")
        if a.size == 0:
            raise EdgeslimError(f"{p}: array '{s.name}' is empty (shape {a.shape}); give at least one sample")
        if not a.all_finite():
            raise EdgeslimError(f"{p}: array '{s.name}' contains NaN or infinite values")
        rank = len(s.dims) if s.dims is not None else a.ndim
        lead = s.dims[0] if s.dims else None
        if a.ndim == rank + 1:
            how, sample = "row", a.shape[1:]
        elif a.ndim == rank and rank >= 1 and (lead is None or isinstance(lead, str) or lead == 1) \
                and a.shape[0] > 1:
            how, sample = "slice", (1, *a.shape[1:])
        else:
            how, sample = "const", a.shape
        if not _fits(s, sample):
            raise EdgeslimError(f"{p}: array '{s.name}' has shape {a.shape} (sample shape {sample}) but model "
                                f"input '{s.name}' expects {s.show()}")
        if how == "const" or a.shape[0] == 1:  # small, or one sample reused by every feed
            whole = a.load().astype(s.dtype)
            parts[s.name] = (whole[0] if how == "row" else whole, "const", s.dtype)
        else:
            parts[s.name], counts[s.name] = (a, how, s.dtype), a.shape[0]
    many = {k: c for k, c in counts.items() if c > 1}
    if len(set(many.values())) > 1:
        raise EdgeslimError(f"{p}: arrays hold different sample counts "
                            f"({', '.join(f'{k}: {counts.get(k, 1)}' for k in parts)})")
    n = next(iter(many.values()), 1)
    return LazyFeeds(parts, range(n))


@dataclass
class Feeds:
    """Feeds for a model and where they came from: `inputs` (an .npz), `shape` (synthetic, some dims
    from --shape) or `declared` (synthetic, the model's own static dims); warnings say what was guessed."""

    feeds: Sequence[Feed]
    source: str
    warnings: list[str]

    @property
    def shapes(self) -> dict[str, list[int]]:
        """Shapes of the first feed: what the planner and the op counts use for symbolic dims."""
        return {k: list(v.shape) for k, v in self.feeds[0].items()}


def make_feeds(
    specs: list[InputSpec], inputs: str | Path | None = None, shapes: Sequence[str] = (), n: int = 1,
    seed: int = 0, batch: int | None = None,
) -> Feeds:
    """Up to `n` feeds from `--inputs FILE.npz` (all of its samples when `n` is 0), else `n` synthetic ones
    from the declared shapes and `--shape NAME=D0,...` (with values suited to each dtype)."""
    if inputs is not None:
        feeds = load_npz_feeds(inputs, specs)
        warns = ["--shape ignored: the --inputs arrays give the shapes"] if shapes else []
        return Feeds(feeds[:n] if n else feeds, "inputs", warns)
    given = parse_shapes(list(shapes), specs)
    feeds, warns = synthetic_feeds(specs, given, max(1, n), seed, batch)
    return Feeds(feeds, "shape" if given else "declared", warns)


def at_batch(feed: Feed, specs: list[InputSpec], batch: int) -> Feed:
    """`feed` with every input whose leading dim is symbolic tiled to `batch` along axis 0 (others as they are)."""
    out: Feed = {}
    for s in specs:
        a = feed[s.name]
        lead = s.dims[0] if s.dims else 1
        if a.ndim and not isinstance(lead, int) and a.shape[0] != batch:
            reps = -(-batch // a.shape[0])
            a = np.concatenate([a] * reps)[:batch]
        out[s.name] = a
    return out
