"""Optimise a third-party ONNX model: repair, graph-optimise, try FP16/INT8 candidates, measure, pick.

`edgeslim optimize MODEL.onnx -o OUT.onnx` is the command; `optimize()` in `edgeslim.onnxopt.run` is the
function behind it. Modules: `load` (robust loading and repair), `inputs` (calibration / synthetic feeds),
`graph` (ORT offline optimisation, dead-node removal, weight-only storage), `quant` (ORT INT8 / FP16
tooling with SQNR fallback), `fidelity` (output error), `bench` (interleaved latency), `report` (tables).
"""
