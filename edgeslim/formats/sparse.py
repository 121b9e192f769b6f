"""Sparse storage of an ONNX model: per initializer a packed bitmask of its non-zero positions plus the
non-zero values in their own dtype, and the graph without weight data, all in one deflated `.npz`.

This is the real byte count behind `size_bytes_compressed` of every stage and the `model.sparse.npz`
a pruning stage writes; `decode_sparse` rebuilds the ONNX model with bit-exact weights.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgeslim.fsutil import write_bytes

SPARSE_FILE = "model.sparse.npz"


def encode_sparse(onnx_path: Path) -> bytes:
    """Encode an ONNX model as: the graph without weight data, and per initializer a packed bitmask of
    its non-zero positions plus the non-zero values in their own dtype; all in one deflated .npz."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    names = [t.name for t in m.graph.initializer]
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(t)
        nz = a != 0
        arrays[f"{i}.shape"] = np.asarray(a.shape, np.int64)
        arrays[f"{i}.mask"] = np.packbits(nz.ravel())
        arrays[f"{i}.values"] = a[nz]
    del m.graph.initializer[:]
    arrays["graph"] = np.frombuffer(m.SerializeToString(), np.uint8)
    arrays["names"] = np.asarray(names, dtype=np.str_)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_sparse(data: bytes):  # -> onnx.ModelProto
    """Inverse of `encode_sparse`: rebuild the ONNX model (bit-exact weights)."""
    import onnx
    from onnx import numpy_helper

    z = np.load(io.BytesIO(data), allow_pickle=False)
    m = onnx.ModelProto()
    m.ParseFromString(z["graph"].tobytes())
    for i, name in enumerate(z["names"]):
        shape = tuple(int(d) for d in z[f"{i}.shape"])
        n = int(np.prod(shape))
        mask = np.unpackbits(z[f"{i}.mask"], count=n).astype(bool)
        vals = z[f"{i}.values"]
        a = np.zeros(n, vals.dtype)
        a[mask] = vals
        m.graph.initializer.append(numpy_helper.from_array(a.reshape(shape), str(name)))
    return m


def write_sparse(onnx_path: Path, dst: Path) -> int:
    """Write the compressed sparse encoding of `onnx_path` to `dst`; returns its size in bytes."""
    data = encode_sparse(onnx_path)
    write_bytes(dst, data)
    return len(data)


def compressed_size(onnx_path: Path) -> dict:
    """Stage metric: bytes of the sparse encoding of this stage's ONNX (the dense ONNX stays `size_bytes`)."""
    if onnx_path.stat().st_size > 256 * 2**20:  # keep measurement quick on very large third-party models
        return {"size_bytes_compressed": None}
    try:
        return {"size_bytes_compressed": len(encode_sparse(onnx_path))}
    except Exception:  # an ONNX with external data or odd dtypes: report nothing rather than guess
        return {"size_bytes_compressed": None}


def write_sparse_stage(onnx_path: Path, folder: Path) -> dict:
    """Store the compressed encoding of a stage's ONNX (the pipeline's one export) in `folder`
    (`model.sparse.npz`). Returns the file's name and bytes, and the dense ONNX's bytes."""
    n = write_sparse(onnx_path, folder / SPARSE_FILE)
    return {"sparse_file": SPARSE_FILE, "sparse_file_bytes": n, "dense_onnx_bytes": onnx_path.stat().st_size}
