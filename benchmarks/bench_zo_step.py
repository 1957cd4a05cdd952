"""Step time of zeroth-order vs first-order training on the same model.

    python benchmarks/bench_zo_step.py --device cuda --model galore-llama-1b --seq 512
    python benchmarks/bench_zo_step.py --device cpu --model tiny-llama --seq 64   # smoke run

Times `--steps` steps after `--warmup` steps of: fo-sgd (forward + backward + SGD), zo-sgd with
each perturbation implementation (fused Triton where it runs, chunked, reference), and prints
a markdown table (ms per step, and the ZO/FO ratio). On CUDA each step is synchronized before
the clock stops and the allocator peak is reported beside it. `--out FILE.jsonl` appends one
line per row as soon as it is measured.

A ZO step runs two forwards and three in-place passes over every parameter (perturb, perturb,
restore) plus the update, so it is expected to cost about two forwards and not one forward +
one backward; the perturbation passes are memory-bound and are what the fused kernel speeds up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--model", default="galore-llama-1b")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_zo_step: --device cuda needs a CUDA GPU (none here); use --device cpu for a "
            "smoke run",
            file=sys.stderr,
        )
        return 2

    from memplan.measure.run import build_step
    from memplan.methods.zo import ZOSettings
    from memplan.models import load_config
    from memplan.workload import Workload

    cfg = load_config(args.model)
    wl = Workload(batch=args.batch, seq=args.seq, dtype=args.dtype, device=args.device)
    cases = [("fo-sgd", None)]
    impls = ["fused", "chunked", "reference"] if args.device == "cuda" else ["chunked", "reference"]
    cases += [("zo-sgd", impl) for impl in impls]
    rows = []
    print(f"{cfg.name}, batch {args.batch} x seq {args.seq}, {args.dtype}, {args.device}")
    print("| method | impl | ms / step | vs fo-sgd | peak allocated (GiB) |")
    print("|---|---|---|---|---|")
    for method, impl in cases:
        zo = ZOSettings(impl=impl) if impl else None
        step = build_step(cfg, method, wl, zo)
        for _ in range(args.warmup):
            step(lambda _p: None)
        sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(lambda _p: None)
        sync()
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        rows.append(
            {
                "model": cfg.name,
                "method": method,
                "impl": impl,
                "ms_per_step": ms,
                "peak_allocated_gib": peak,
                **vars(args) | {"out": None},
            }
        )
        ratio = ms / rows[0]["ms_per_step"]
        print(
            f"| {method} | {impl or '-'} | {ms:.1f} | {ratio:.2f}x | "
            f"{'-' if peak is None else f'{peak:.2f}'} |",
            flush=True,
        )
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
        del step
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
