"""CUDA only: the planner's recommended split runs under a 4090-sized memory cap, the split
with one more FO layer does not (issue 5 acceptance; prints numbers, writes JSONL; not a test).

    python benchmarks/cuda_plan_check.py --out docs/validation/cuda-plan.jsonl \
        [--model llama-7b] [--seq 512] [--gpu rtx4090] [--steps 3]

On a larger GPU, `torch.cuda.set_per_process_memory_fraction` caps this process's caching
allocator at the preset card's memory less its CUDA context (what the allocator may use
there); then for K (recommended) and K - 1 it builds the hybrid step on CUDA and runs
`--steps` steps, recording the allocator's peak or the OOM. One JSON line per split, written
as it is taken. Without a CUDA GPU it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--gpu", default="rtx4090")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU: this check runs the split on one", file=sys.stderr)
        sys.exit(2)
    from memplan.measure.run import build_step
    from memplan.methods.hybrid import HybridSettings
    from memplan.methods.zo import ZOSettings
    from memplan.models import load_config
    from memplan.plan import make_budget, plan
    from memplan.workload import Workload

    cfg = load_config(args.model)
    bud = make_budget(args.gpu)
    wl = Workload(batch=1, seq=args.seq, dtype="bf16", device="cuda")
    zs = ZOSettings()
    p = plan(cfg, wl, bud, zo=zs, gpu=args.gpu)
    if p.split is None or p.split == 0:
        print(f"error: no split to check (recommended: {p.split})", file=sys.stderr)
        sys.exit(2)
    device_total = torch.cuda.get_device_properties(0).total_memory
    cap = bud.total_bytes - bud.context_bytes  # what the allocator may use on the preset card
    torch.cuda.set_per_process_memory_fraction(cap / device_total)
    with args.out.open("a") as sink:
        for k in (p.split, p.split - 1):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            row = {"model": cfg.name, "seq": args.seq, "gpu_preset": args.gpu, "zo_layers": k}
            row.update(cap_bytes=cap, device=torch.cuda.get_device_name(0))
            t0 = time.perf_counter()
            try:
                step = build_step(cfg, "hybrid", wl, zs, hybrid=HybridSettings(zo_layers=k))
                for _ in range(args.steps):
                    step(lambda _phase: None)
                torch.cuda.synchronize()
                row.update(ok=True, max_allocated=torch.cuda.max_memory_allocated())
                row["max_reserved"] = torch.cuda.max_memory_reserved()
            except torch.cuda.OutOfMemoryError as e:
                row.update(ok=False, error=str(e).splitlines()[0][:200])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            row["recommended"] = k == p.split
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(json.dumps(row))
            step = None  # free the model before the next split


if __name__ == "__main__":
    main()
