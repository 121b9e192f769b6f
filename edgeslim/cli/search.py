"""`edgeslim search`: hardware-aware search over compression recipes (Optuna; see edgeslim.search).

Several workers share one study through `--storage`: start the search once, then on each machine
`edgeslim search MODEL --task T --device D --trials N --storage URL --worker` (same arguments); every
worker takes free trial slots until the N trials are done. The non-worker process also waits for the
others, then fully fine-tunes the Pareto front and writes the report.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console
from edgeslim.cli.options import accelerator_option


@app.command()
def search(
    model: Path = typer.Argument(..., help="trained model folder (edgeslim train); with --inputs also an .onnx "
                                 "file or a .pt2 program"),
    task: str | None = typer.Option(None, "--task", "-t", help="built-in task name or path to data"),
    inputs: Path | None = typer.Option(None, "--inputs", help="no labels: an .npz of the model's inputs (one array "
                                       "per input, samples on axis 0) in place of --task; the original is the "
                                       "teacher, trials are scored on validation fidelity"),
    min_cosine: float = typer.Option(0.98, help="--inputs: the validation score a pick needs (worst-output "
                                    "cosine; top-1 agreement where lower, for score outputs)"),
    device: str = typer.Option("cortex-m4", "--device", "-d", help="device profile name or YAML path"),
    trials: int = typer.Option(20, help="total trials in the study (shared by all workers)"),
    out: Path = typer.Option(Path("runs/search"), "--out", "-o", help="search folder (resumed when it exists)"),
    objectives: str = typer.Option("accuracy,energy", help="comma list: accuracy, energy, latency, flash, arena"),
    max_flash: str | None = typer.Option(None, help="model file limit, e.g. 256KB (default: device flash)"),
    max_ram: str | None = typer.Option(None, help="activation arena limit, e.g. 64KB (default: device SRAM)"),
    max_latency: str | None = typer.Option(None, help="estimated device latency limit, e.g. 20ms"),
    max_energy: str | None = typer.Option(None, help="estimated energy per inference limit, e.g. 2mJ"),
    max_accuracy_drop: float | None = typer.Option(1.0, help="points below the baseline (validation/test)"),
    proxy_epochs: int = typer.Option(3, help="fine-tuning epochs of the proxy that ranks trials"),
    proxy_slack: float = typer.Option(2.0, help="extra accuracy points a proxy may lose (full fine-tune recovers)"),
    top: int = typer.Option(6, help="front members fine-tuned fully and measured at the end"),
    knobs: str | None = typer.Option(None, help="restrict the space: comma list of knobs (default: all)"),
    sampler: str = typer.Option("tpe", help="tpe (with sensitivity-seeded start) or random"),
    guided: bool = typer.Option(True, help="seed the first trials from per-layer sensitivity"),
    storage: str | None = typer.Option(None, help="journal:///file, sqlite:///file, postgresql://... "
                                       "(default: journal in --out)"),
    study_name: str = typer.Option("edgeslim-search", help="study name inside the storage"),
    worker: bool = typer.Option(False, help="only run trials of a shared study (no final stage, no report)"),
    wait: float = typer.Option(3600.0, help="seconds to wait for other workers' trials before the final stage"),
    seed: int = typer.Option(0, help="random seed"),
    accelerator: str = accelerator_option(),
) -> None:
    """Search compression recipes for a device under hard budgets; writes the front and report.html."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens; stderr stays for errors

    def log(msg: str, warn: bool) -> None:
        console.print(f"[yellow]{msg}[/]" if warn else msg)

    from edgeslim.errors import EdgeslimError

    if (task is None) == (inputs is None):
        raise EdgeslimError("search: give --task (labelled data) or --inputs FILE.npz (no labels), exactly one")
    if inputs is not None:
        _search_inputs(model, inputs, out, trials, objectives, min_cosine, proxy_epochs, seed, device)
        return
    from edgeslim.configs import build_config
    from edgeslim.search.job import SearchJob

    job = build_config(SearchJob, "search", model=model, task=task, out=out, device=device, trials=trials,
                objectives=[o.strip() for o in objectives.split(",") if o.strip()], max_flash=max_flash,
                max_ram=max_ram, max_latency=max_latency, max_energy=max_energy, max_accuracy_drop=max_accuracy_drop,
                proxy_epochs=proxy_epochs, proxy_slack=proxy_slack, top=top,
                knobs=[k.strip() for k in knobs.split(",")] if knobs else None, sampler=sampler, guided=guided,
                storage=storage, study_name=study_name, worker=worker, wait=wait, seed=seed, accelerator=accelerator)
    summary = api.search(job, log=log)
    if worker:
        console.print(f"worker done: ran {summary['ran']} trials")
        return
    out = out.resolve()
    c = summary["counts"]
    again = f", {c['REQUEUED']} interrupted and run again" if c.get("REQUEUED") else ""
    console.print(f"{c['COMPLETE']} trials trained, {c['PRUNED']} rejected before training, {c['FAIL']} failed{again}; "
                  f"hypervolume {summary['hypervolume']:.4g}")
    for o, b in summary["best"].items():
        vt = (f"; picked on validation {b['val']:.4g}, test {b['test']:.4g}" if "val" in b and "test" in b else "")
        console.print(f"best {o}: {out / b['file']} (trial {b['trial']}{vt})")
    if not summary["best"]:
        console.print("[yellow]no front member met the budget after full fine-tuning[/]")
    console.print(f"report: {out / 'report.html'}")


def _search_inputs(model: Path, inputs: Path, out: Path, trials: int, objectives: str, min_cosine: float,
                   proxy_epochs: int, seed: int, device: str) -> None:
    """`search --inputs`: `edgeslim.search.inputs` (objective: validation fidelity and one cost)."""
    from edgeslim.search.inputs import InputsSearch, search_inputs, val_score

    costs = [o.strip() for o in objectives.split(",") if o.strip() and o.strip() not in ("accuracy", "fidelity")]
    cost = "latency" if costs in ([], ["energy"]) else costs[0]
    job = InputsSearch(model=model, inputs=inputs, out=out, trials=trials, cost=cost, min_cosine=min_cosine,
                       proxy_epochs=proxy_epochs, seed=seed, device=device)
    summary = search_inputs(job, log=lambda m: console.print(m, highlight=False))
    b = summary["best"]
    if b is None:
        console.print(f"[yellow]no trial finished[/]; trials: {out.resolve() / 'search.json'}")
        return
    top1 = b["test"].get("top1_agreement")
    console.print(f"best: {out.resolve() / b['file']} (trial {b['trial']}: {b['why']}); picked on validation "
                  f"score {val_score(b['val']):.4f} (cosine {b['val']['cosine']:.4f}), held-out cosine "
                  f"{b['test']['cosine']:.4f}" + (f", held-out top-1 agreement {top1:.4f}" if top1 is not None else "")
                  + (f", {b['speedup_vs_baseline']:.2f}x faster" if b.get("speedup_vs_baseline") else "")
                  + f", {b['size_bytes']} B", highlight=False, soft_wrap=True)
