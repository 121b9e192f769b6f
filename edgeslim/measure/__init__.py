"""Measurement: figures of a model that never change it. One core, `core.measure_model`: any model (ONNX
file, model folder, .tflite) + its inputs (+ a task, a reference, a device) -> one `Measurement`. Where each
number comes from:

    the record   core.py         measure_model -> Measurement (as_dict: the results.json / --json keys);
                                 compare_latency: several models timed together; Measurer: `ctx.measure`
    model, size  source.py       opening a model (a folder exported once), bytes on disk, whether a task fits the input
    graph        fields.py       params/MACs from the graph, arena and energy fields at the inputs' shapes
    inputs       onnxkit/inputs  --inputs .npz or synthetic feeds by dtype and name, --shape, named dims
    latency      latency.py      `interleaved_latency`, the one timing loop (sessions and callables)
    accuracy     onnxkit/session `onnx_accuracy`: ONNX Runtime on the task's test split; only with a task
    fidelity     fidelity.py     outputs against a reference model: cosine, abs errors, top-1 agreement
    arena        arena.py        static activation-memory planner (TFLite Micro's greedy-by-size; its building blocks and the order search live in onnxkit: liveness.py, op_order.py)
    flash, fit   device_fit.py   `device_fit`, the one fit verdict: weights + runtime vs the device profile's flash and RAM
    energy       energy.py       measured (RAPL window around the timer, window.py) or estimated (analytic,
                                 onnx_counts.py), always labelled
    RSS          memory.py       peak resident memory of inference in a child process
    .tflite      tflite.py       LiteRT latency (the one timer), accuracy, TFLite Micro arena and fit
    battery      battery.py      battery life from energy and rate (estimated); the CLI prints it (`cli.battery`)
    speed picks  decide.py       per-round time ratios with a confidence interval, the pick rule `choose_option`
    text         text_encoder.py a sentence encoder's figures (cosine to the original, latency by length)
Parameter and MAC counts of a PyTorch model are `edgeslim.models.counts`. What is not a figure of one model
lives elsewhere: a pipeline stage's figures and the end-of-run comparison of stages (timed together, device
verdicts, layers, behaviour) in `edgeslim.run` (stage_metrics, together, device_verdict, stage_compare); the
calibration of a device profile in `edgeslim.devices.calibrate` (`python -m edgeslim.devices.calibrate`)."""
