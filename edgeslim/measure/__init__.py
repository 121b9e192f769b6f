"""Measurement: figures of a model that never change it. Where each number comes from:

    latency      latency.py      ONNX Runtime timing; `interleaved_latency` is the one timer comparisons use
    accuracy     stage.py        ONNX Runtime on the task's test split (with the stage's other figures)
    size         stage.py        bytes on disk of the stored artifact and of the ONNX file
    arena        arena.py        static activation-memory planner (TFLite Micro's greedy-by-size), op_order.py
    flash, fit   device_fit.py   weights + runtime vs the device profile's flash and RAM
    energy       energy.py       measured (RAPL/NVML windows, window.py) or estimated (analytic, onnx_counts.py)
    RSS          memory.py       peak resident memory of inference in a child process
    .tflite      tflite.py       LiteRT latency/accuracy, TFLite Micro arena
    deploy table deployment.py   PyTorch vs ORT latency, batch latency, fit, energy, RSS for `edgeslim measure`
    before/after compare.py      a pass's own before/after figures (to be folded into one core, issue 13)
Parameter and MAC counts of a PyTorch model are `edgeslim.models.counts`."""
