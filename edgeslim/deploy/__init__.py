"""Deployable files from a model: ONNX export with a parity check (`export`), graph compilation steps of
`edgeslim compile` (`compile`: BN folding, constant folding, ONNX Runtime offline optimisation) and the
`edgeslim export` job (`artifacts`: ONNX FP32/INT8, `.tflite`, C array)."""
