"""Pruning building blocks the pruning passes share: magnitude masks and schedules (`masks`), Torch-Pruning
set-up and channel counts (`structured`), N:M masks (`nm`), sparsity regularisers (`regularizers`),
per-layer sensitivity curves and ratio allocation (`sensitivity`), early-exit heads (`exits`). Nothing
here times a model or writes a stage: the passes in `edgeslim.passes` do the wiring."""
