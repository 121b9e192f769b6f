"""A converted (and perhaps pruned, trained) module written back to ONNX with a parity check: ONNX Runtime must
reproduce the module's outputs on the given inputs (max abs error per output, output units)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.onnxtorch.parity import max_abs, torch_outputs

OPSET = 17
# channel counts of convolutions are zero-padded to this multiple (`align.align_channels`): ONNX Runtime's NCHWc
# CPU kernels (SIMD block 16 with AVX-512, 8 with AVX2) take a pruned count such as 45 only once it is padded.
# 8, not 4 or 16: on a pruned ddddocr detector (AVX-512, one thread, per-round ratios of one interleaved run)
# 4 / 8 / 16 ran FP32 at 0.93 / 0.92 / 0.91 of the unpadded file and its static INT8 at 0.87 / 0.84 / 0.89
ALIGN = 8


def export_converted(module: nn.Module, feeds: dict[str, np.ndarray], out_path: str | Path, *,
                     dynamic: bool = False, atol: float = 1e-3, align: int = ALIGN) -> dict:
    """Export `module` (inputs named `module.input_names`, tuple outputs `module.output_names`) traced at `feeds`
    to `out_path` and check it in ONNX Runtime. `dynamic=True` keeps the dims the source ONNX graph had
    symbolic (`module.dynamic_axes`) symbolic in the file; shape arithmetic that reads live tensor shapes
    (Shape chains into Reshape, constant Reshape targets that follow the input) stays live, but values the
    trace turns into Python numbers (Slice bounds, If conditions) are fixed at the feeds' shapes, and the check
    runs at those shapes only. The default is a file with the feeds' shapes. `align` (0: off): convolution
    channel counts zero-padded to that multiple where the padding can be followed (`align.align_channels`; the
    same function, checked by the parity run; a padded graph that fails it is dropped for the plain one).

    Shape reads of dims that are static are folded into constants first (`onnxkit.static_shapes`), then chains
    of view ops and constant Slices collapsed (`onnxkit.view_chains`), then single ops made cheaper
    (`onnxkit.cheap_ops`: no-op arithmetic removed, 1-D convs of few output positions as MatMul, constant affine
    ops beside convs folded, written-out hard-swish as one op).
    Returns {"path", "size_bytes", "parity_max_abs_diff": {output: error}, "aligned_convs": count,
    "static_shapes_folded": count, "views_collapsed": nodes removed, "ops_rewritten": rewrites applied}. Nothing is
    written when the check fails (EdgeslimError naming the output and the error)."""
    in_names = list(getattr(module, "input_names", [f"input_{i}" for i in range(len(feeds))]))
    ref = torch_outputs(module, in_names, feeds)
    out_names = list(getattr(module, "output_names", [f"output_{i}" for i in range(len(ref))]))
    # the TorchScript exporter refuses some ONNX names (e.g. '387'): export with plain names, rename after
    tmp_in, tmp_out = [f"in_{i}" for i in range(len(in_names))], [f"out_{i}" for i in range(len(out_names))]
    args = tuple(torch.from_numpy(np.array(feeds[n], copy=True)) for n in in_names)
    sym = getattr(module, "dynamic_axes", {}) if dynamic else {}
    axes = {t: sym[n] for t, n in zip(tmp_in + tmp_out, in_names + out_names) if n in sym}
    was = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
                              input_names=tmp_in, output_names=tmp_out, dynamic_axes=axes or None)
    finally:
        module.train(was)
    data = _rename(buf.getvalue(), dict(zip(tmp_in + tmp_out, in_names + out_names)))
    data = _keep_inputs(data, in_names, feeds, {n: sym.get(n, {}) for n in in_names})
    import onnx

    from edgeslim.onnxkit.cheap_ops import cheapen_ops
    from edgeslim.onnxkit.static_shapes import fold_static_shapes, symbolic_dims
    from edgeslim.onnxkit.view_chains import collapse_views

    plain, aligned = data, 0
    m = onnx.load_from_string(data)
    dims = symbolic_dims(m)  # one shape inference for both rewrites (seconds on a large detector)
    shapes = fold_static_shapes(m, dims)  # Shape reads of static dims: constants (batch-1 streaming models gain most)
    views = collapse_views(m, dims)  # Squeeze->Unsqueeze pairs, Reshape chains, Slice of Slice: fewer kernels/call
    ops = sum(cheapen_ops(m, dims).values())  # cheaper kernels (cheap_ops.DEFAULT_RULES)
    if shapes or views or ops:
        data = m.SerializeToString()
    if align > 1:
        from edgeslim.onnxtorch.align import align_channels

        m, aligned = align_channels(onnx.load_from_string(data), align)
        if aligned:  # padding rewrote the convs' shapes: the dims `dim_names` wrote are typed again
            from edgeslim.onnxkit.dim_names import name_dims

            name_dims(m)
        data = m.SerializeToString() if aligned else data
    try:
        errs = _check(data, feeds, in_names, out_names, ref, atol, out_path)
    except EdgeslimError:
        if data is plain:
            raise
        data, aligned, shapes, views, ops = plain, 0, 0, 0, 0  # the rewritten graph does not check out: the file as exported
        errs = _check(data, feeds, in_names, out_names, ref, atol, out_path)
    write_bytes(Path(out_path), data)
    return {"path": str(out_path), "size_bytes": len(data), "parity_max_abs_diff": errs, "aligned_convs": aligned,
            "static_shapes_folded": shapes, "views_collapsed": views, "ops_rewritten": ops}


def _check(data: bytes, feeds: dict[str, np.ndarray], in_names: list[str], out_names: list[str],
           ref: list[np.ndarray], atol: float, out_path: str | Path) -> dict[str, float]:
    """Max abs error per output of the serialized model in ONNX Runtime against the module's outputs `ref`;
    EdgeslimError naming the output when one is off by more than `atol` x max(1, its largest magnitude)."""
    from edgeslim.onnxkit.session import session

    sess = session(data)
    feed_names = {i.name for i in sess.get_inputs()}  # inputs the trace found unused are dropped by the exporter
    got = sess.run(None, {n: feeds[n] for n in in_names if n in feed_names})  # all, unless an input is unused
    errs = {n: max_abs(r, g) for n, r, g in zip(out_names, ref, got)}
    for n, r in zip(out_names, ref):
        scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
        if not np.isfinite(errs[n]) or errs[n] > atol * scale:
            raise EdgeslimError(f"{out_path}: ONNX Runtime output '{n}' differs from PyTorch by {errs[n]:.3g} "
                                f"(tolerance {atol:g} x {scale:.3g}); not written")
    return errs


def _rename(data: bytes, names: dict[str, str]) -> bytes:
    """The exported model with its graph inputs/outputs renamed (`names`: exported -> wanted)."""
    import onnx

    from edgeslim.onnxkit.graph import all_nodes

    m = onnx.load_from_string(data)
    wanted = set(names.values())
    full = {k: v for k, v in names.items() if k != v}
    for n in all_nodes(m.graph):  # internal names that happen to equal a wanted one move aside
        for o in n.output:
            if o in wanted and o not in full:
                full[o] = f"{o}_internal"
    for t in m.graph.initializer:
        if t.name in wanted and t.name not in full:
            full[t.name] = f"{t.name}_internal"
    for t in m.graph.initializer:
        t.name = full.get(t.name, t.name)
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        v.name = full.get(v.name, v.name)
    for n in all_nodes(m.graph):
        n.input[:] = [full.get(i, i) for i in n.input]
        n.output[:] = [full.get(o, o) for o in n.output]
    return m.SerializeToString()


def _keep_inputs(data: bytes, names: list[str], feeds: dict[str, np.ndarray], axes: dict[str, dict[int, str]]) -> bytes:
    """The exported model with every input of the source declared, in order: the tracer drops inputs the traced
    path never read (a sample-rate scalar whose If was decided at trace time); they come back unused."""
    import onnx
    from onnx import helper

    m = onnx.load_from_string(data)
    have = {i.name: i for i in m.graph.input}
    if all(n in have for n in names):
        return data
    inits = {t.name for t in m.graph.initializer}
    rest = [i for i in m.graph.input if i.name not in names and i.name not in inits]
    new = []
    for n in names:
        if n in have:
            new.append(have[n])
            continue
        a = np.asarray(feeds[n])
        dims: list[int | str] = [axes[n].get(k, d) for k, d in enumerate(a.shape)]
        new.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), dims))
    keep_inits = [i for i in m.graph.input if i.name in inits]
    del m.graph.input[:]
    m.graph.input.extend(new + rest + keep_inits)
    return m.SerializeToString()
