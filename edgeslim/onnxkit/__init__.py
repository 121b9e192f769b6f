"""The ONNX toolkit every part of edgeslim uses (it imports nothing above `errors` and `fsutil`).

- `load`: read a model leniently (`read_onnx`) or strictly with repairs (`load_and_repair`: Constant
  weights lifted, opset upgraded for per-channel INT8);
- `graph`: walks that include If/Loop/Scan bodies, dead-node removal, op counts, node names, extra outputs;
- `shapes`: shape inference, best effort or with every input static at batch 1;
- `session`: ONNX Runtime sessions (the one optimisation-level table), batched runs, offline optimisation;
- `inputs`: a model's inputs, `--shape NAME=...` parsing, `.npz` and synthetic feeds;
- `quant`: ONNX Runtime's INT8 / FP16 / INT4 tooling behind one calibration reader, and the one SQNR.
"""
