"""The `.eshare` file: an entropy-coded weight-shared model (Deep Compression, Han et al. 2016) that
edgeslim loads back bit-exactly (`edgeslim unpack`, `load_shared_model`).

```
b"ESHR" | u8 version | u32 header length | header: zlib(JSON: spec, tensor names/shapes/kinds)
per shared tensor: codebook (k x f32; k x f16 if its header entry says `book: float16`, version 2)
                   | Huffman code lengths of the indices and the gaps (u8 each) | u32 bit counts | cluster-index bitstream | sparse-position (gap) bitstream
per other tensor:  its raw bytes (biases, norms)
```
Sparse positions are run lengths of zeros between non-zero weights, capped at `2^gap_bits - 1` (that
symbol means "skip that many, no weight", Han's filler); both streams are canonical-Huffman coded. Version 2
lets a tensor's header entry name its own `gap_bits`; version-1 files read as before.
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
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.formats.huffman import canonical_codes, decode, encode, fixed_codes, huffman_lengths
from edgeslim.fsutil import write_bytes
from edgeslim.models.spec import build_model, resize_to_state_dict

MAGIC = b"ESHR"
VERSION = 2  # the newest this edgeslim writes; it reads every version in READS
READS = (1, 2)  # 2: optional per-tensor `gap_bits` and float16 codebooks (`book`) in the header
ESHARE_FILE = "model.eshare"


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


def _encode_shared(flat: np.ndarray, gap_bits: int, huffman: bool, name: str, max_codebook: int,
                   half_book: bool) -> tuple[list[bytes], dict, dict]:
    """One shared tensor's parts (codebook, tables, bit counts, index stream, gap stream), their byte
    counts and its header entry fields."""
    filler = 2**gap_bits - 1
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
    book16 = half_book and bool(np.array_equal(book.astype(np.float16).astype(np.float32), book))
    book_bytes = book.astype("<f2" if book16 else "<f4").tobytes()
    parts = [book_bytes, tables, struct.pack("<II", ni, ng), bi, bg]
    acct = {"codebook_bytes": len(book_bytes), "table_bytes": len(tables) + 8, "index_bytes": len(bi),
            "position_bytes": len(bg)}
    entry: dict[str, Any] = {"kind": "shared", "k": k, "nonzero": int(len(pos)), "dense": dense, "gaps": len(gaps)}
    if book16:
        entry["book"] = "float16"
    return parts, acct, entry


def save_shared(path: Path, state: dict[str, torch.Tensor], spec: dict | None, shared: list[str],
                gap_bits: int | str = 5, huffman: bool = True, max_codebook: int = 256,
                half_codebooks: bool = False, per_tensor: dict[str, dict] | None = None) -> dict:
    """Write `state` to an entropy-coded `.eshare` file. Tensors named in `shared` are stored as codebook
    + Huffman-coded indices and zero runs; others raw. Returns the byte breakdown.

    `gap_bits="auto"`: each shared tensor gets the zero-run symbol width (1-12 bits) that stores it in the
    fewest bytes (very sparse layers want long runs). `half_codebooks`: a codebook whose values are all
    exactly float16 is stored in 2 bytes per value. Either makes a version-2 file (per-tensor fields in the
    header); without them the file is version 1, as before, byte for byte. `per_tensor`, if given, is
    filled with each shared tensor's bytes by part, its gap bits, codebook size and non-zero count."""
    default_gap = 5 if gap_bits == "auto" else int(gap_bits)
    meta: dict[str, Any] = {"spec": spec, "gap_bits": default_gap, "huffman": huffman, "tensors": []}
    body = io.BytesIO()
    acct = dict(codebook_bytes=0, index_bytes=0, position_bytes=0, table_bytes=0, raw_bytes=0)
    for name, t in state.items():
        arr = t.detach().cpu().contiguous()
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype).replace("torch.", "")}
        if name in shared and arr.dtype == torch.float32:
            flat = arr.numpy().ravel()
            tries = range(1, 13) if gap_bits == "auto" else [default_gap]
            best = min((_encode_shared(flat, g, huffman, name, max_codebook, half_codebooks) + (g,) for g in tries),
                       key=lambda r: sum(len(b) for b in r[0]))
            parts, part_acct, fields, g = best
            for b in parts:
                body.write(b)
            for k, v in part_acct.items():
                acct[k] += v
            entry.update(fields)
            if per_tensor is not None:
                per_tensor[name] = {**part_acct, "gap_bits": g, "k": fields["k"], "nonzero": fields["nonzero"],
                                    "size": int(flat.size)}
            if g != default_gap:
                entry["gap_bits"] = g
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
    version = 2 if any("gap_bits" in e or "book" in e for e in meta["tensors"]) else 1
    header = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    data = MAGIC + struct.pack("<BI", version, len(header)) + header + body.getvalue()
    write_bytes(Path(path), data)
    acct["header_bytes"] = len(MAGIC) + 5 + len(header)
    acct["file_bytes"] = len(data)
    assert sum(v for k, v in acct.items() if k != "file_bytes") == len(data)
    return acct


def _read_header(data: bytes, path: Path) -> tuple[dict, int]:
    if data[:4] != MAGIC:
        raise EdgeslimError(f"{path}: not an edgeslim weight-shared file (bad magic)")
    version, hlen = struct.unpack("<BI", data[4:9])
    if version not in READS:
        raise EdgeslimError(f"{path}: .eshare version {version}, this edgeslim reads versions "
                            f"{', '.join(map(str, READS))}")
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
            filler = 2 ** e.get("gap_bits", meta["gap_bits"]) - 1
            k = e["k"]
            width = 2 if e.get("book") == "float16" else 4
            book = np.frombuffer(data[off : off + width * k], "<f2" if width == 2 else "<f4").astype(np.float32)
            off += width * k
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
    path = Path(path)
    meta, _ = _read_header(path.read_bytes(), path)
    if not meta.get("spec"):
        raise EdgeslimError(f"{path}: holds weights only (no architecture spec); use load_shared()")
    state = load_shared(path)
    model = build_model(meta["spec"])
    resize_to_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta["spec"]
