"""Samples and outputs that stay on disk: memory that depends on the batch, not on the number of samples.

`NpyMember` reads one array of an .npz sample by sample (axis 0) with `os.pread`: a stored (uncompressed,
`np.savez`) member is read in place, a compressed one (`np.savez_compressed`) is inflated once into a
temporary file first. Nothing is memory-mapped on purpose: pages of a mapped file that were read count in
the process's resident set (ru_maxrss), pages read with pread stay in the kernel's page cache.

`LazyFeeds` is a sequence of feeds ({input name: array}) built from such members when indexed, so a list
of 512 calibration samples costs one sample of memory until a caller keeps them. `Spill` is an append-only
list of per-feed outputs (lists of arrays) written to a temporary file, read back one item at a time:
the original model's outputs on every calibration sample stay on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

Feed = dict[str, np.ndarray]
CHUNK_BYTES = 32 << 20  # bytes read at once when a whole member is scanned (finite check)


def _tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgeslim-lazy-"))


class NpyMember:
    """One array of an .npz, read from disk on demand (no pickles). Units: bytes for `nbytes`."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        with zipfile.ZipFile(self.path) as z:
            info = z.getinfo(name + ".npy")
            with z.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                header = f.tell()
            if dtype.hasobject:
                raise ValueError(f"array '{name}' holds Python objects (pickles are not read)")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(self.path, "rb") as raw:  # the local header's own name/extra lengths locate the data
                    raw.seek(info.header_offset + 26)
                    n, m = np.frombuffer(raw.read(4), "<u2")
                self.file, self.offset = self.path, info.header_offset + 30 + int(n) + int(m) + header
            else:  # inflate once into a temporary file, read from there
                self._tmp = _tmpdir()
                self.file = self._tmp / "member.npy"
                with z.open(info) as src, open(self.file, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
                self.offset = header
        self.shape, self.dtype, self.fortran = tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)

    def __del__(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _read(self, start: int, count: int) -> bytes:
        fd = os.open(self.file, os.O_RDONLY)
        try:
            buf = os.pread(fd, count, self.offset + start)
        finally:
            os.close(fd)
        if len(buf) != count:
            raise ValueError(f"array '{self.name}' is truncated")
        return buf

    def rows(self, i: int, j: int) -> np.ndarray:
        """Samples i..j-1 along axis 0 (a new array, C order)."""
        if self.fortran or self.ndim == 0:
            return self.load()[i:j]
        row = self.nbytes // max(1, self.shape[0])
        j = min(j, self.shape[0])
        data = self._read(i * row, max(0, j - i) * row)
        return np.frombuffer(data, self.dtype).reshape((max(0, j - i), *self.shape[1:])).copy()

    def load(self) -> np.ndarray:
        """The whole array in memory (small arrays: scalars, states reused by every sample)."""
        a = np.frombuffer(self._read(0, self.nbytes), self.dtype)
        return a.reshape(self.shape, order="F" if self.fortran else "C").copy()

    def all_finite(self) -> bool:
        """No NaN or infinity anywhere, scanned in chunks of about CHUNK_BYTES."""
        if self.dtype.kind != "f":
            return True
        if self.fortran or self.ndim == 0:
            return bool(np.isfinite(self.load()).all())
        row = max(1, self.nbytes // max(1, self.shape[0]))
        step = max(1, CHUNK_BYTES // row)
        return all(np.isfinite(self.rows(i, i + step)).all() for i in range(0, self.shape[0], step))


class LazyFeeds(Sequence[Feed]):
    """Feeds read from disk when indexed. `parts` maps each input to (member, how, dtype): how is "row"
    (sample i = a[i]), "slice" (sample i = a[i:i+1]) or "const" (the same array for every sample; then
    member is the array itself). `index` selects and orders the samples (a subset is another LazyFeeds)."""

    def __init__(self, parts: dict[str, tuple[NpyMember | np.ndarray, str, np.dtype]], index: Sequence[int]):
        self.parts, self._idx = parts, list(index)

    def __len__(self) -> int:
        return len(self._idx)

    def _one(self, i: int) -> Feed:
        out: Feed = {}
        for k, (m, how, dt) in self.parts.items():
            if how == "const":
                assert isinstance(m, np.ndarray)
                out[k] = m
            else:
                assert isinstance(m, NpyMember)
                a = m.rows(i, i + 1)
                out[k] = (a[0] if how == "row" else a).astype(dt, copy=False)
        return out

    @overload
    def __getitem__(self, i: int) -> Feed: ...

    @overload
    def __getitem__(self, i: slice) -> LazyFeeds: ...

    def __getitem__(self, i: int | slice) -> Feed | LazyFeeds:
        if isinstance(i, slice):
            return LazyFeeds(self.parts, self._idx[i])
        return self._one(self._idx[i])

    def __iter__(self) -> Iterator[Feed]:
        for i in self._idx:
            yield self._one(i)

    def subset(self, positions: Sequence[int]) -> LazyFeeds:
        """The feeds at `positions` (positions in this sequence)."""
        return LazyFeeds(self.parts, [self._idx[p] for p in positions])


def subset(feeds: Sequence[Feed], positions: Sequence[int]) -> Sequence[Feed]:
    """`feeds` at `positions`, lazily when `feeds` is a LazyFeeds."""
    if isinstance(feeds, LazyFeeds):
        return feeds.subset(positions)
    return [feeds[p] for p in positions]


class Spill(Sequence[list[np.ndarray]]):
    """Append-only list of per-feed outputs (lists of arrays) kept in a temporary file (removed when this
    object goes away); items are read back one at a time. Slicing gives a list of items."""

    def __init__(self) -> None:
        self._dir = _tmpdir()
        self._path = self._dir / "outputs.bin"
        self._path.touch()
        self._items: list[list[tuple[int, tuple[int, ...], np.dtype]]] = []
        self._end = 0

    def __del__(self) -> None:
        if hasattr(self, "_dir"):
            shutil.rmtree(self._dir, ignore_errors=True)

    def append(self, outs: Sequence[np.ndarray]) -> None:
        meta = []
        with open(self._path, "ab") as f:
            for o in outs:
                a = np.ascontiguousarray(o)
                f.write(a.tobytes())
                meta.append((self._end, tuple(a.shape), a.dtype))
                self._end += a.nbytes
        self._items.append(meta)

    def __len__(self) -> int:
        return len(self._items)

    def _one(self, i: int) -> list[np.ndarray]:
        out = []
        fd = os.open(self._path, os.O_RDONLY)
        try:
            for off, shape, dt in self._items[i]:
                n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
                out.append(np.frombuffer(os.pread(fd, n, off), dt).reshape(shape).copy())
        finally:
            os.close(fd)
        return out

    @overload
    def __getitem__(self, i: int) -> list[np.ndarray]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[np.ndarray]]: ...

    def __getitem__(self, i: int | slice) -> list[np.ndarray] | list[list[np.ndarray]]:
        if isinstance(i, slice):
            return [self._one(k) for k in range(len(self._items))[i]]
        return self._one(range(len(self._items))[i])

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        for k in range(len(self._items)):
            yield self._one(k)


def stream_cosine(pairs: Iterable[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> tuple[float, bool]:
    """(worst-output cosine, all finite) of `got` vs `ref` over (ref, got) pairs of per-feed outputs, in
    float64, accumulated feed by feed (the same figure as concatenating every feed's outputs; 1.0 when both
    are all zeros, 0.0 when only one is; a non-finite cosine counts as 0.0)."""
    dot: list[float] = []
    na: list[float] = []
    nb: list[float] = []
    finite = True
    for ref, got in pairs:
        if not dot:
            dot, na, nb = [0.0] * len(ref), [0.0] * len(ref), [0.0] * len(ref)
        for k, (r, g) in enumerate(zip(ref, got)):
            a, b = np.asarray(r, np.float64).ravel(), np.asarray(g, np.float64).ravel()
            finite &= bool(np.isfinite(a).all() and np.isfinite(b).all())
            dot[k] += float(a @ b)
            na[k] += float(a @ a)
            nb[k] += float(b @ b)
    worst = 1.0
    for d, x, y in zip(dot, na, nb):
        c = 1.0 if x == y == 0 else (0.0 if x == 0 or y == 0 else d / (np.sqrt(x) * np.sqrt(y)))
        worst = min(worst, float(c) if np.isfinite(c) else 0.0)
    return worst, finite


def sample_axis(shape: Sequence[int], n: int) -> int | None:
    """The axis of an output of `shape` that holds the `n` samples of its feed: 0 when it has n entries, else
    the first axis that does (a recurrent state [layers, n, H]); None when n is 1 or no axis has n entries
    (the whole output is one sample's)."""
    if n <= 1:
        return None
    if len(shape) and shape[0] == n:
        return 0
    return next((j for j, d in enumerate(shape) if d == n), None)


def stream_output_cosines(pairs: Iterable[tuple[Sequence[np.ndarray], Sequence[np.ndarray], int]]) -> list[float]:
    """Each output's fidelity (0-1) of `got` vs `ref` over (ref, got, samples in the feed) triples of per-feed
    outputs, accumulated feed by feed in float64: for a float output the lower of its mean per-sample cosine (a
    non-finite or one-sided-zero sample counts 0.0, both zero 1.0; an output's samples lie on its `sample_axis`)
    and its cosine over all values (`stream_cosine`; a one-value output's per-sample cosine is only its sign),
    as `onnxkit.session.output_scores` judges several outputs; for another dtype the mean per-sample fraction
    of elements exactly equal."""
    total: list[float] = []
    count: list[int] = []
    whole: list[list[float]] = []  # per output: dot, |ref|^2, |got|^2, float?
    for ref, got, n in pairs:
        if not total:
            total, count, whole = [0.0] * len(ref), [0] * len(ref), [[0.0, 0.0, 0.0, 0.0] for _ in ref]
        for k, (r, g) in enumerate(zip(ref, got)):
            r, g = np.asarray(r), np.asarray(g)
            ax = sample_axis(r.shape, n)
            a = (np.moveaxis(r, ax, 0).reshape(n, -1) if ax is not None else r.reshape(1, -1)).astype(np.float64)
            b = (np.moveaxis(g, ax, 0).reshape(n, -1) if ax is not None else g.reshape(1, -1)).astype(np.float64)
            if r.dtype.kind in "fc":
                na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
                with np.errstate(all="ignore"):
                    c = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))
                total[k] += float(np.where(np.isfinite(c), c, 0.0).sum())
                whole[k][0] += float((a * b).sum())
                whole[k][1] += float((a * a).sum())
                whole[k][2] += float((b * b).sum())
                whole[k][3] = 1.0
            else:
                total[k] += float((a == b).mean(1).sum()) if a.shape[1] else float(len(a))
            count[k] += len(a)
    out: list[float] = []
    for t, m, (d, x, y, is_float) in zip(total, count, whole):
        score = t / m if m else 1.0
        if is_float:
            w = 1.0 if x == y == 0 else (0.0 if x == 0 or y == 0 else float(d / (np.sqrt(x) * np.sqrt(y))))
            score = min(score, w if np.isfinite(w) else 0.0)
        out.append(score)
    return out
