"""ONNX export of a sentence encoder (transformer + pooling + L2 normalisation in one graph), ONNX
Runtime's transformer fusions, and a look at how the weights are stored.

The exported graph takes int64 `input_ids`, `attention_mask` (and `token_type_ids` when the model
takes them), each (batch, sequence) with both axes dynamic, and returns `sentence_embedding`
(batch, hidden) float32: a deployment needs no Python pooling code.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.nlp.encoder import SentenceEncoder, tokenize
from edgeslim.onnxkit.session import session

OPSET = 17
OUTPUT = "sentence_embedding"


def export_encoder(enc: SentenceEncoder, path: Path, check_texts: list[str] | None = None,
                   atol: float = 1e-4) -> dict:
    """Export `enc` to `path`; with `check_texts`, ONNX Runtime must match PyTorch within `atol` (the
    embeddings are unit vectors) on two batches of different sequence lengths. Returns parity notes."""
    enc = enc.eval()
    names = enc.input_names
    # A padded batch of two as the tracing example: the attention-mask path is what gets recorded.
    example = tokenize(enc, ["an example sentence for tracing the graph", "short"])
    args = tuple(torch.from_numpy(example[k]) for k in names)
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes[OUTPUT] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the graph it writes is the one ONNX Runtime's BERT fusions recognise.
        torch.onnx.export(enc, args, buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
                          input_names=names, output_names=[OUTPUT], dynamic_axes=axes, do_constant_folding=True)
    write_bytes(path, buf.getvalue())
    if not check_texts:
        return {}
    return encoder_parity(enc, path, check_texts, atol)


def run_onnx(sess, feed: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]


def onnx_embed(path: Path, enc: Any, texts: list[str], batch: int = 64, threads: int = 1) -> np.ndarray:
    """Sentence embeddings of `texts` from the ONNX model at `path` (tokenised with `enc`'s tokenizer)."""
    sess = session(path, threads=threads)
    return np.concatenate([run_onnx(sess, tokenize(enc, texts[i : i + batch])) for i in range(0, len(texts), batch)])


def encoder_parity(enc: SentenceEncoder, path: Path, texts: list[str], atol: float = 1e-4) -> dict:
    from edgeslim.nlp.encoder import embed

    worst = 0.0
    for chunk in (texts[:8], texts[8:11] or texts[:3]):
        ref = embed(enc, chunk)
        got = onnx_embed(path, enc, chunk)
        worst = max(worst, float(np.abs(ref - got).max()))
    if not np.isfinite(worst) or worst > atol:
        raise EdgeslimError(f"{path}: ONNX Runtime embeddings differ from PyTorch by {worst:.3g} (tolerance {atol:g})")
    return {"parity_max_abs_diff": worst}


@contextmanager
def quiet_logs() -> Iterator[None]:
    """ONNX Runtime's Python tools log advice on the root logger and warn ('consider pre-processing',
    hidden-size notes); the pass notes say what was done instead."""
    from edgeslim.onnxkit.quant import quiet

    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def explicit_head_counts(model: Any) -> int:
    """Replace the -1 in `view(batch, seq, -1, head_dim)` reshapes of the query/key/value projections with
    the layer's real head count (its Linear width / head_dim), so ONNX Runtime's attention fusion reads
    each layer's heads from the graph (pruned layers differ). Returns the number of reshapes changed."""
    from onnx import numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        n = producer.get(name)
        if n is not None and n.op_type == "Constant" and n.attribute and n.attribute[0].type == 4:  # TENSOR
            return numpy_helper.to_array(n.attribute[0].t)
        return None

    changed = 0
    for node in g.node:
        if node.op_type != "Reshape":
            continue
        cat = producer.get(node.input[1])
        if cat is None or cat.op_type != "Concat" or len(cat.input) != 4:
            continue
        heads, hd = const(cat.input[2]), const(cat.input[3])
        if heads is None or hd is None or heads.size != 1 or int(heads.ravel()[0]) != -1:
            continue
        add = producer.get(node.input[0])
        mm = next((producer[i] for i in (add.input if add is not None and add.op_type == "Add" else [])
                   if i in producer and producer[i].op_type == "MatMul"), None)
        if mm is None or mm.input[1] not in inits:
            continue
        width = int(inits[mm.input[1]].dims[-1])
        if width % int(hd.ravel()[0]):
            continue
        name = f"{cat.name or node.name}_heads"
        g.initializer.append(numpy_helper.from_array(np.array([width // int(hd.ravel()[0])], np.int64), name))
        cat.input[2] = name
        changed += 1
    return changed


def fuse_transformer(src: Path, dst: Path) -> dict:
    """ONNX Runtime's offline transformer optimizer (Attention, SkipLayerNormalization, BiasGelu,
    EmbedLayerNormalization fusions), head counts read per layer from the graph. Returns the
    fused-operator counts."""
    import onnx
    from onnxruntime.transformers import optimizer

    m = onnx.load(str(src))
    n_explicit = explicit_head_counts(m)
    # Encoder-only models (BERT, RoBERTa, MiniLM, ...) share ORT's "bert" fusion patterns.
    with quiet_logs():
        opt = optimizer.optimize_model(m, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    opt.topological_sort()
    out = opt.model
    if any(n.domain == "com.microsoft" for n in out.graph.node) and not any(
            o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.add(domain="com.microsoft", version=1)  # the fused ops' domain, as ORT's own save does
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    write_bytes(dst, out.SerializeToString())
    return {**stats, "explicit_head_reshapes": n_explicit}


def weight_storage(path: Path) -> dict:
    """Bytes of initializer data by element type (e.g. {'float32': ..., 'int8': ...}) and the number of
    float32 initializers of 4,096+ elements: a quantized file should have few left (embeddings kept float,
    LayerNorm and biases are small)."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path))
    by: Counter[str] = Counter()
    big_float = 0
    tensors = list(m.graph.initializer)
    for n in m.graph.node:  # weights stored in Constant nodes count too
        if n.op_type == "Constant":
            tensors += [a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        dt = helper.tensor_dtype_to_np_dtype(t.data_type)
        size = int(np.prod(t.dims)) if t.dims else 1
        by[str(np.dtype(dt))] += size * np.dtype(dt).itemsize
        if t.data_type == onnx.TensorProto.FLOAT and size >= 4096:
            big_float += 1
    return {"bytes_by_dtype": dict(by), "large_float32_tensors": big_float}


def op_counts_file(path: Path) -> dict[str, int]:
    import onnx

    from edgeslim.onnxkit.graph import op_counts as counts

    return counts(onnx.load(str(path)))
