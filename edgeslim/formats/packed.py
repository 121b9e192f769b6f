"""The packed weight file of simulated low-bit models (`weights.packed`): a JSON header, then per tensor
either its codes packed at exactly their bit width followed by float32 side info (per-channel scales or
a codebook), or plain float32. Its size is the real storage cost of those bit widths.

    u32 header length | header: JSON [{name, shape, bits, scheme?, side?}, ...] | tensor blobs in order
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from edgeslim.fsutil import write_bytes

PACKED_FILE = "weights.packed"


class Codec(Protocol):
    """What the writer needs of a weight codec (`edgeslim.quant.codebook.WeightCodec`)."""

    scheme: str
    bits: int

    def dequant(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]: ...


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes at exactly `bits` bits each (little-endian bit order)."""
    c = codes.astype(np.uint8).reshape(-1, 1)
    b = np.unpackbits(c, axis=1, bitorder="little")[:, :bits]
    return np.packbits(b.ravel(), bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: int, n: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return np.packbits(b, axis=1, bitorder="little").ravel()


def write_packed(path: Path, state: dict[str, torch.Tensor], codecs: Mapping[str, Codec]) -> dict:
    """Write a weight file: each quantized weight as packed codes + float32 side info, everything else
    float32, behind a JSON header. Returns {tensor: bytes used}. The file size is the storage cost."""
    header, blobs, used = [], [], {}
    for name, t in state.items():
        if not torch.is_floating_point(t):
            continue
        codec = codecs.get(name)
        if codec is None:
            blob = t.detach().float().numpy().tobytes()
            header.append({"name": name, "shape": list(t.shape), "bits": 32})
        else:
            _, codes, side = codec.dequant(t)
            blob = pack_codes(codes.numpy(), codec.bits) + side.astype(np.float32).tobytes()
            header.append({"name": name, "shape": list(t.shape), "bits": codec.bits, "scheme": codec.scheme,
                           "side": int(side.size)})
        blobs.append(blob)
        used[name] = len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    write_bytes(path, struct.pack("<I", len(head)) + head + b"".join(blobs))
    return used
