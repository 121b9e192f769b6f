"""Canonical Huffman coding of small integer alphabets (cluster indices, zero-run gaps).

A few dozen lines rather than a dependency: the `.eshare` weight file (`formats.eshare`) stores only the
code lengths, and the decoder rebuilds the canonical codes from them.
"""

from __future__ import annotations

import heapq
import math

from edgeslim.errors import EdgeslimError


def huffman_lengths(freqs: dict[int, int]) -> dict[int, int]:
    """Code length of each symbol (a symbol alone gets length 1)."""
    syms = [s for s, f in freqs.items() if f > 0]
    if not syms:
        return {}
    if len(syms) == 1:
        return {syms[0]: 1}
    heap: list[tuple[int, int, list[int]]] = [(freqs[s], i, [s]) for i, s in enumerate(sorted(syms))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(syms, 0)
    tie = len(heap)
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, tie, a + b))
        tie += 1
    if max(lengths.values()) > 32:
        raise EdgeslimError("Huffman code longer than 32 bits; use fewer clusters or gap bits")
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical Huffman codes (as bit strings) from code lengths: decoder needs only the lengths."""
    codes, code, prev = {}, 0, 0
    for s, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[s] = format(code, f"0{n}b")
        code += 1
        prev = n
    return codes


def encode(symbols: list[int], codes: dict[int, str]) -> tuple[bytes, int]:
    bits = "".join(codes[s] for s in symbols)
    n = len(bits)
    if n == 0:
        return b"", 0
    pad = (-n) % 8
    return int(bits + "0" * pad, 2).to_bytes((n + pad) // 8, "big"), n


def decode(data: bytes, nbits: int, codes: dict[int, str], count: int | None = None) -> list[int]:
    table = {c: s for s, c in codes.items()}
    bits = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b")[:nbits] if data else ""
    out, cur = [], ""
    for b in bits:
        cur += b
        s = table.get(cur)
        if s is not None:
            out.append(s)
            cur = ""
            if count is not None and len(out) == count:
                break
    if cur:
        raise EdgeslimError("corrupt .eshare file: a bitstream ends inside a code")
    return out


def fixed_codes(alphabet: int) -> dict[int, str]:
    n = max(1, math.ceil(math.log2(max(2, alphabet))))
    return {s: format(s, f"0{n}b") for s in range(alphabet)}
