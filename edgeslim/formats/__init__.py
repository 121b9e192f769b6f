"""The files edgeslim writes besides ONNX, in one place beside `edgeslim unpack`: the sparse encoding of an
ONNX model (`sparse`, `model.sparse.npz`), packed low-bit weights (`packed`, `weights.packed`) and the
entropy-coded weight-shared model (`eshare`, `model.eshare`, with its canonical Huffman coder `huffman`)."""
