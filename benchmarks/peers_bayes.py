"""The `bayes-lenet300` job of benchmarks/peers.py: `recipes/bayesian-compression.yaml` (sparsity learnt by
sparse variational dropout, bits per layer from the posterior, Huffman-coded `.eshare`) on LeNet-300-100 /
digits28 beside `torch.nn.utils.prune` on the same trained baseline.

The peer is what a PyTorch user does with the tools in the box: `torch.nn.utils.prune.global_unstructured`
(L1) at the sparsity edgeslim's pass LEARNT (read from its results.json, so both keep the same number of
weights) and at 90%, fine-tuned with the recipe's budget (peers.finetune_budget), then ONNX Runtime's
`quantize_dynamic` (int8 weights) and gzip -9 of that file as its stored form. Every row is measured by the
same core (peers_measure): ONNX B and ONNX gzip B are the same encodings for every tool; "stored" is each
tool's own format (edgeslim: the `.eshare` file `edgeslim unpack` reads).
"""

from __future__ import annotations

import json
from pathlib import Path

import peers_tools as pt
from peers_measure import Job

from edgeslim import models

RECIPE = "bayesian-compression"
TASK = "digits28"  # MNIST's 28x28 input, so LeNet-300-100 has its 266,610 parameters


def _learnt_sparsity(run_dir: Path) -> float | None:
    """Weight sparsity the variational pass learnt, from edgeslim's results.json (None if it did not run)."""
    f = run_dir / "results.json"
    if not f.is_file():
        return None
    stages = json.loads(f.read_text())["stages"]
    vp = next((s for s in stages if s["name"] == "variational_prune"), None)
    return None if vp is None else float(vp["notes"]["weight_sparsity"])


def job_bayes(ctx) -> Job:  # noqa: ANN001 - peers.Ctx (imported lazily: peers imports this module)
    """edgeslim's bayesian-compression recipe vs torch.nn.utils.prune global L1 (+ int8 weights, gzip)."""
    from peers import _pruned, add_gzip_row, edgeslim_row, finetune_budget, reference_row

    task = ctx.task(TASK)
    job = Job("bayes-lenet300", "Bayesian compression (learnt sparsity + posterior bits + entropy code), lenet300 "
              f"on {TASK}", "accuracy", task=task)
    base = ctx.baseline("lenet300", TASK)
    net, _ = models.load_model(base)
    work = ctx.out / "peers" / job.name
    work.mkdir(parents=True, exist_ok=True)
    reference_row(job, net, task, work)
    edgeslim_row(ctx, job, RECIPE, base, task)
    learnt = _learnt_sparsity(ctx.out / "edgeslim" / job.name)
    budget = finetune_budget(ctx.recipe(RECIPE))
    amounts = sorted({round(learnt, 4)} if learnt else set()) + [0.9]
    for amount in amounts:
        tool = f"torch.nn.utils.prune global L1 {100 * amount:.2f}% + ONNX Runtime quantize_dynamic"
        row = _pruned(ctx, job, tool, base, task, lambda n, a=amount: pt.torch_global_l1(n, a), budget,
                      post=lambda src, dst: pt.ort_dynamic(src, dst))
        if amount != 0.9:
            row.note += "; sparsity = edgeslim's learnt sparsity"
        add_gzip_row(job, tool, row)
    return job
