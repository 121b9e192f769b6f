"""Shared quantization helpers: fake-quant modules and BN folding (`fakequant`), low-bit weight
quantizers and bit packing (`codebook`), the ONNX QDQ writer and per-layer SQNR report (`qdq`), and
ONNX Runtime format selection by measurement (`ortfmt`)."""
