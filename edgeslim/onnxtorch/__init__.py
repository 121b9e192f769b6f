"""ONNX in, trainable PyTorch out: `onnx_to_torch` turns an ONNX file into an `nn.Module` whose weights are real
`nn.Parameter`s inside real layers (Conv -> `nn.ConvNd`, Gemm/MatMul with a constant weight -> `nn.Linear`,
BatchNormalization -> `nn.BatchNormNd`, LSTM/GRU -> `nn.LSTM`/`nn.GRU`), so Torch-Pruning's dependency graph can
prune it, training updates it, and `export_converted` writes it back to ONNX with a parity check.

    module, report = onnx_to_torch("model.onnx", input_shapes={"x": (1, 3, 48, 192)})
    outs = module(x)                   # always a tuple, in graph-output order
    errs = conversion_parity("model.onnx", module, {"x": x_np})   # max abs error per output, ONNX Runtime vs torch
    ignored = keep_whole(module)  # Torch-Pruning's ignored_layers: Linear/recurrent/output/head-split layers
    export_converted(module, {"x": x_np}, "out.onnx", dynamic=True)  # back to ONNX, checked in ONNX Runtime
"""

from edgeslim.onnxtorch.convert import ConversionReport, ConvertedModule, onnx_to_torch
from edgeslim.onnxtorch.export import export_converted
from edgeslim.onnxtorch.parity import conversion_parity
from edgeslim.onnxtorch.prunable import keep_whole, unprunable_layers

__all__ = ["ConversionReport", "ConvertedModule", "export_converted", "conversion_parity", "onnx_to_torch",
           "keep_whole", "unprunable_layers"]
