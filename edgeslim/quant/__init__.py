"""Quantization building blocks the quantization passes share: fake-quant modules and BN folding
(`fakequant`), QAT preparation and exact QDQ export (`qat`), the ONNX QDQ writer and per-layer SQNR
report (`qdq`), low-bit / non-uniform weight codecs and the one k-means (`codebook`), simulated low-bit
fine-tuning (`lowbit`), mixed-precision bit allocation (`mixed`) and weight sharing by clustering
(`sharing`). ONNX Runtime's own quantizers are wrapped in `edgeslim.onnxkit.quant`."""
