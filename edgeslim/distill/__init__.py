"""Knowledge distillation: the KD losses, teacher runner/cache, feature taps and transfer sets (`kd`) and the
student training loop (`train.distill_model`). The `distill` pass and `edgeslim distill` use them."""
