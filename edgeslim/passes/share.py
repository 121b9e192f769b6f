"""Weight sharing (Deep Compression, Han et al. 2016): per-layer k-means, centroid fine-tuning, and an
entropy-coded weight file that edgeslim loads back.

`weight_share` clusters the non-zero weights of every Linear/Conv layer into `2^bits` centroids (linear
initialisation over [min, max], as the paper recommends), then fine-tunes the centroids only: each
layer's weight becomes `codebook[index]` through a parametrisation, so a centroid's gradient is the sum
of the gradients of its weights. Pruned (zero) weights stay zero.

`entropy_code` writes the stage artifact, a `.eshare` file:

```
b"ESHR" | u8 version | u32 header length | header: zlib(JSON: spec, tensor names/shapes/kinds)
per shared tensor: codebook (k x f32) | Huffman code lengths of the indices and the gaps (u8 each)
                   | u32 bit counts | cluster-index bitstream | sparse-position (gap) bitstream
per other tensor:  its raw bytes (biases, norms)
```
Sparse positions are run lengths of zeros between non-zero weights, capped at `2^gap_bits - 1` (that
symbol means "skip that many, no weight", Han's filler); both streams are canonical-Huffman coded.
`load_shared(path)` decodes it into a state dict that equals the model's exactly.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant.codebook import kmeans_1d
from edgeslim.quant.huffman import canonical_codes, decode, encode, fixed_codes, huffman_lengths
from edgeslim.train import TrainConfig, evaluate

MAGIC = b"ESHR"
VERSION = 1

# ------------------------------------------------------------------------------------------ clustering


def _layers(model: nn.Module, names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules()
           if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and (names is None or n in names)]
    if names is not None:
        missing = set(names) - {n for n, _ in out}
        if missing:
            raise EdgeslimError(f"weight_share: no Linear/Conv layer {', '.join(sorted(missing))}")
    return out


class SharedWeight(nn.Module):
    """Parametrisation `weight = [0, *codebook][index]`; the trainable tensor is the codebook."""

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, codebook: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)  # 0 = pruned weight, i = codebook[i - 1]
        self.init = codebook.detach().clone()

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.cat([codebook.new_zeros(1), codebook])[self.index]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.init.to(weight.dtype)


@torch.no_grad()
def cluster_layer(m: nn.Module, bits: int, init: str = "linear", iters: int = 30) -> dict:
    """Cluster a layer's non-zero weights into `2^bits` values in place and attach the codebook
    parametrisation. Returns stats."""
    w: torch.Tensor = cast(Any, m).weight.detach()
    nz = w != 0
    if not bool(nz.any()):
        return {"clusters": 0, "nonzero": 0}
    c, assign = kmeans_1d(w[nz].double().numpy(), 2**bits, init, iters, tol=0.0)
    index = torch.zeros(w.shape, dtype=torch.long)
    index[nz] = torch.from_numpy(assign) + 1
    parametrize.register_parametrization(m, "weight", SharedWeight(index, torch.from_numpy(c).float()), unsafe=True)
    return {"clusters": len(c), "nonzero": int(nz.sum())}


def unshare(model: nn.Module) -> None:
    """Bake the codebooks into plain weights (exactly `codebook[index]`)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight") and isinstance(cast(Any, m).parametrizations.weight[0], SharedWeight):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


class WeightShare(PassConfig):
    bits: int = Field(5, ge=1, le=8, description="index bits per Linear weight: 2^bits shared values per layer")
    conv_bits: int | None = Field(None, ge=1, le=8, description="index bits for Conv layers (default: bits)")
    init: Literal["linear", "density", "random"] = "linear"
    iters: int = Field(30, ge=1)
    layers: list[str] | None = None  # default: every Linear and Conv
    fp16_rest: bool = Field(False, description="round biases/norms to fp16 values after fine-tuning "
                            "(entropy_code then stores them in 2 bytes, losslessly)")
    finetune: TrainConfig | None = None  # default: the recipe's finetune block (centroids only)


@register("weight_share", WeightShare)
def weight_share(model: nn.Module | None, task: Task, cfg: WeightShare, ctx: RunContext) -> PassResult:
    """Per-layer k-means weight sharing (Deep Compression) with centroid fine-tuning."""
    assert model is not None
    stats = {}
    for n, m in _layers(model, cfg.layers):
        bits = cfg.conv_bits if (cfg.conv_bits and isinstance(m, nn.modules.conv._ConvNd)) else cfg.bits
        stats[n] = {"bits": bits, **cluster_layer(m, bits, cfg.init, cfg.iters)}
    acc0 = evaluate(model, task.x_val, task.y_val)
    try:
        hist = ctx.finetune_model(model, task, cfg.finetune, desc="weight_share")
    finally:
        unshare(model)  # weights stay exactly codebook[index]; biases and norms were trained too
    if cfg.fp16_rest:
        shared = {id(m.weight) for _, m in _layers(model, cfg.layers)}
        with torch.no_grad():
            for p in model.parameters():
                if id(p) not in shared and p.dtype == torch.float32:
                    p.copy_(p.half().float())
    return PassResult(model, notes={"layers": stats, "val_accuracy_before_finetune": acc0,
                                    "val_accuracy": hist["val_accuracy"]})


# ------------------------------------------------------------------------------------------ file format


def _gaps(flat_nonzero: np.ndarray, filler: int) -> list[int]:
    """Zero-run symbols before each non-zero weight; `filler` means skip `filler` zeros, no weight."""
    out: list[int] = []
    prev = -1
    for p in flat_nonzero.tolist():
        g = p - prev - 1
        while g >= filler:
            out.append(filler)
            g -= filler
        out.append(g)
        prev = p
    return out


def save_shared(path: Path, state: dict[str, torch.Tensor], spec: dict | None, shared: list[str],
                gap_bits: int = 5, huffman: bool = True, max_codebook: int = 256) -> dict:
    """Write `state` to an entropy-coded `.eshare` file. Tensors named in `shared` are stored as codebook
    + Huffman-coded indices and zero runs; others raw. Returns the byte breakdown."""
    filler = 2**gap_bits - 1
    meta: dict[str, Any] = {"spec": spec, "gap_bits": gap_bits, "huffman": huffman, "tensors": []}
    body = io.BytesIO()
    acct = dict(codebook_bytes=0, index_bytes=0, position_bytes=0, table_bytes=0, raw_bytes=0)
    for name, t in state.items():
        arr = t.detach().cpu().contiguous()
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype).replace("torch.", "")}
        if name in shared and arr.dtype == torch.float32:
            flat = arr.numpy().ravel()
            pos = np.flatnonzero(flat)
            values = flat[pos]
            book, idx = np.unique(values, return_inverse=True)
            if len(book) > max_codebook:
                raise EdgeslimError(
                    f"entropy_code: {name} has {len(book)} distinct non-zero weights (max {max_codebook}); "
                    "run weight_share before entropy_code"
                )
            dense = len(pos) == flat.size
            gaps = [] if dense else _gaps(pos, filler)
            k = len(book)
            if huffman:
                li = huffman_lengths(Counter(idx.tolist()))
                lg = huffman_lengths(Counter(gaps))
                ci, cg = canonical_codes(li), canonical_codes(lg)
                tables = bytes(li.get(s, 0) for s in range(k)) + (b"" if dense else bytes(lg.get(s, 0) for s in range(filler + 1)))
            else:
                ci, cg, tables = fixed_codes(k), fixed_codes(filler + 1), b""
            bi, ni = encode(idx.tolist(), ci)
            bg, ng = encode(gaps, cg)
            body.write(book.astype("<f4").tobytes())
            body.write(tables)
            body.write(struct.pack("<II", ni, ng))
            body.write(bi)
            body.write(bg)
            acct["codebook_bytes"] += 4 * k
            acct["table_bytes"] += len(tables) + 8
            acct["index_bytes"] += len(bi)
            acct["position_bytes"] += len(bg)
            entry.update(kind="shared", k=k, nonzero=int(len(pos)), dense=dense, gaps=len(gaps))
        else:
            half = arr.half() if arr.dtype == torch.float32 else None
            if half is not None and torch.equal(half.float(), arr):  # exactly representable: lossless
                raw = half.numpy().tobytes()
                entry.update(kind="raw", stored="float16")
            else:
                raw = arr.numpy().tobytes()
                entry.update(kind="raw")
            body.write(raw)
            acct["raw_bytes"] += len(raw)
        meta["tensors"].append(entry)
    header = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    data = MAGIC + struct.pack("<BI", VERSION, len(header)) + header + body.getvalue()
    from edgeslim.fsutil import write_bytes

    write_bytes(Path(path), data)
    acct["header_bytes"] = len(MAGIC) + 5 + len(header)
    acct["file_bytes"] = len(data)
    assert sum(v for k, v in acct.items() if k != "file_bytes") == len(data)
    return acct


def _read_header(data: bytes, path: Path) -> tuple[dict, int]:
    if data[:4] != MAGIC:
        raise EdgeslimError(f"{path}: not an edgeslim weight-shared file (bad magic)")
    version, hlen = struct.unpack("<BI", data[4:9])
    if version != VERSION:
        raise EdgeslimError(f"{path}: .eshare version {version}, this edgeslim reads version {VERSION}")
    try:
        meta = json.loads(zlib.decompress(data[9 : 9 + hlen]))
    except (zlib.error, json.JSONDecodeError) as e:
        raise EdgeslimError(f"{path}: corrupt .eshare header ({e})") from None
    return meta, 9 + hlen


def load_shared(path: Path | str) -> dict[str, torch.Tensor]:
    """Decode a `.eshare` file into a state dict (bit-exact with the model that wrote it)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err0:
        raise EdgeslimError(f"{path}: cannot read ({err0.strerror})") from None
    meta, off = _read_header(data, path)
    filler = 2 ** meta["gap_bits"] - 1
    state = {}
    try:
        for e in meta["tensors"]:
            dtype = getattr(torch, e["dtype"])
            n = math.prod(e["shape"])
            if e["kind"] == "raw":
                stored = getattr(torch, e.get("stored", e["dtype"]))
                size = n * torch.empty((), dtype=stored).element_size()
                buf = bytearray(data[off : off + size])
                t = torch.frombuffer(buf, dtype=stored).reshape(e["shape"]) if n else torch.empty(e["shape"], dtype=stored)
                state[e["name"]] = t.to(dtype).clone()
                off += size
                continue
            k = e["k"]
            book = np.frombuffer(data[off : off + 4 * k], "<f4")
            off += 4 * k
            if meta["huffman"]:
                li = {s: int(x) for s, x in enumerate(data[off : off + k]) if x}
                off += k
                lg: dict[int, int] = {}
                if not e["dense"]:
                    lg = {s: int(x) for s, x in enumerate(data[off : off + filler + 1]) if x}
                    off += filler + 1
                ci, cg = canonical_codes(li), canonical_codes(lg)
            else:
                ci, cg = fixed_codes(k), fixed_codes(filler + 1)
            ni, ng = struct.unpack("<II", data[off : off + 8])
            off += 8
            bi, bg = data[off : off + (ni + 7) // 8], data[off + (ni + 7) // 8 : off + (ni + 7) // 8 + (ng + 7) // 8]
            off += (ni + 7) // 8 + (ng + 7) // 8
            idx = decode(bi, ni, ci, e["nonzero"])
            flat = np.zeros(n, np.float32)
            if e["dense"]:
                positions = np.arange(n)
            else:
                positions_l, p = [], 0
                for g in decode(bg, ng, cg):
                    if g == filler:
                        p += filler
                    else:
                        p += g
                        positions_l.append(p)
                        p += 1
                positions = np.asarray(positions_l, dtype=np.int64)
            if len(positions) != len(idx) or len(idx) != e["nonzero"]:
                raise EdgeslimError(f"{path}: corrupt stream for {e['name']}")
            flat[positions] = book[np.asarray(idx, dtype=np.int64)]
            state[e["name"]] = torch.from_numpy(flat.reshape(e["shape"]))
    except (KeyError, struct.error, ValueError, IndexError) as err:
        raise EdgeslimError(f"{path}: corrupt .eshare file ({type(err).__name__}: {err})") from None
    return state


def load_shared_model(path: Path | str) -> tuple[nn.Module, dict]:
    """Rebuild the model a `.eshare` file holds (its spec is embedded). Returns (model in eval mode, spec)."""
    from edgeslim.models.spec import build_model, fit_to_state_dict

    path = Path(path)
    meta, _ = _read_header(path.read_bytes(), path)
    if not meta.get("spec"):
        raise EdgeslimError(f"{path}: holds weights only (no architecture spec); use load_shared()")
    state = load_shared(path)
    model = build_model(meta["spec"])
    fit_to_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta["spec"]


class EntropyCode(PassConfig):
    gap_bits: int = Field(5, ge=1, le=16, description="zero runs up to 2^gap_bits - 2 per symbol; longer ones add a filler")
    huffman: bool = Field(True, description="Huffman-code indices and runs (false: fixed-width codes)")
    max_codebook: int = Field(256, ge=1, le=65536, description="refuse layers with more distinct weights")


@register("entropy_code", EntropyCode)
def entropy_code(model: nn.Module | None, task: Task, cfg: EntropyCode, ctx: RunContext) -> PassResult:
    """Store the model as codebooks + Huffman-coded indices and sparse positions (the stage's size)."""
    assert model is not None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    shared = [f"{n}.weight" if n else "weight" for n, _ in _layers(model)]
    path = ctx.stage_dir / "model.eshare"
    spec = {k: v for k, v in ctx.spec.items() if k != "extra"}  # architecture only, not training notes
    acct = save_shared(path, state, spec, shared, cfg.gap_bits, cfg.huffman, cfg.max_codebook)
    back = load_shared(path)
    exact = all(torch.equal(back[k], state[k]) for k in state)
    if not exact:
        raise AssertionError("entropy_code: the decoded file differs from the model")
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((state[n] != 0).sum()) for n in shared)
    dense = 4 * params
    notes = {
        **acct, "dense_fp32_bytes": dense, "compression": round(dense / acct["file_bytes"], 2),
        "bits_per_nonzero_weight": round(8 * (acct["index_bytes"] + acct["position_bytes"]) / max(1, nonzero), 3),
        "roundtrip_exact": exact,
    }
    return PassResult(model, artifact=path, notes=notes)
