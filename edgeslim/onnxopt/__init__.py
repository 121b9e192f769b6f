"""Optimise a third-party ONNX model: repair, graph-optimise, try FP16/INT8 candidates, measure, pick.

`edgeslim optimize MODEL.onnx -o OUT.onnx` is the command; `optimize()` in `edgeslim.onnxopt.run` is the
function behind it. Modules: `candidates` (build each candidate and check its fidelity), `weight_only`
(int8/fp16 weight storage), `fallback` (static INT8 with per-layer SQNR fallback), `fidelity` (output
error), `run` (the job: interleaved latency, the choice, the written file). Loading, repair, inputs,
sessions and the quantization wrappers are the shared ONNX toolkit, `edgeslim.onnxkit`.
"""
