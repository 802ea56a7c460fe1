"""Pre-training speed: a step's two views one after the other against side by side.

:func:`fungi_ssl.embeddings.encoder.pretrain` runs each view's encoder pass,
forward and backward, in a thread of its own (``view_threads=2``,
:data:`~fungi_ssl.embeddings.encoder.VIEW_THREADS`) while the next batch is
drawn. This script trains the book's encoder size on synthetic pixels with
the real shapes (73 Sentinel-2 dates × 10 bands, 60 Sentinel-1 dates × 2
bands), batch 512 as the book does, once with ``view_threads=1`` and once
with 2, and reports milliseconds per step, their ratio, and whether the two
encoders are equal bit for bit (they must be).

Usage::

    .venv/bin/python benchmarks/bench_pretrain.py [--steps 150] [--pixels 16384]

Writes ``benchmarks/results/pretrain.json``. Measured on an idle machine
the ratio is what carries over; the milliseconds depend on the VM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--pixels", type=int, default=16_384)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pretrain.json")
    args = ap.parse_args()
    import torch
    from bench_encoder import synthetic_pixels

    from fungi_ssl.embeddings.encoder import EncoderConfig, pretrain

    pixels = synthetic_pixels(args.pixels)
    runs, states = {}, {}
    for threads in (1, 2):
        start = time.perf_counter()
        trained, _ = pretrain(pixels, EncoderConfig(), steps=args.steps, batch_size=512,
                              seed=0, progress=False, view_threads=threads)
        seconds = time.perf_counter() - start
        runs[threads] = {"view_threads": threads, "seconds": seconds,
                         "ms_per_step": 1000 * seconds / args.steps}
        states[threads] = trained.model.state_dict()
    same = all(torch.equal(states[1][k], states[2][k]) for k in states[1])
    ratio = runs[2]["ms_per_step"] / runs[1]["ms_per_step"]
    print(f"{args.steps} steps, batch 512, {args.pixels:,} synthetic pixels, book encoder size")
    for r in runs.values():
        print(f"view_threads={r['view_threads']}: {r['ms_per_step']:.1f} ms/step")
    print(f"time ratio (2 / 1): {ratio:.2f}; weights identical: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "pixels": args.pixels,
                                    "runs": list(runs.values()), "ratio": ratio,
                                    "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
