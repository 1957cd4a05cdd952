"""Wall time of `memplan plan` for every bundled preset (prints numbers; not a test).

    python benchmarks/bench_plan.py [--gpu rtx4090] [--seq 512] [--runs 3]

For each preset: the in-process time of `memplan.plan.plan` (split search, the ranked table of
every configuration, suggestions when nothing fits), the number of reduced-depth tape replays
it took, the recommended split, and for comparison one full-depth `estimate()` of the same
model. Presets whose weights alone exceed the card print the planner's one-line answer. Then
the cold-start time of the command itself (a fresh interpreter: imports included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="rtx4090")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from memplan.errors import MemplanError
    from memplan.estimate import estimate
    from memplan.models import load_config, max_sequence, preset_names
    from memplan.plan import make_budget, plan
    from memplan.workload import Workload

    bud = make_budget(args.gpu)
    print(f"memplan plan MODEL --gpu {args.gpu} --seq {args.seq} (in process, median of runs)")
    print(
        f"{'preset':20} {'layers':>6} {'plan ms':>8} {'tapes':>6} {'split':>6} {'full est ms':>11}"
    )
    worst = 0.0
    for name in preset_names():
        cfg = load_config(name)
        seq = min(args.seq, max_sequence(cfg) or args.seq)
        wl = Workload(seq=seq)
        times, p, note = [], None, ""
        for _ in range(args.runs):
            t0 = time.perf_counter()
            try:
                p = plan(cfg, wl, bud, gpu=args.gpu)
            except MemplanError as e:
                note = str(e)[:60]
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        worst = max(worst, ms)
        t0 = time.perf_counter()
        estimate(cfg, "adamw", wl, gpu=args.gpu)
        full = (time.perf_counter() - t0) * 1e3
        split = "-" if p is None or p.split is None else str(p.split)
        tapes = p.n_estimates if p is not None else 0
        print(
            f"{name:20} {cfg.num_layers:6d} {ms:8.1f} {tapes:6d} {split:>6} {full:11.1f}"
            + (f"  ({note})" if note else "")
        )
    print(f"slowest plan: {worst:.1f} ms")

    cmd = [sys.executable, "-c", "from memplan.cli import main; main()", "plan", "llama-7b"]
    cold = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--json"], capture_output=True, check=True)
        cold.append(time.perf_counter() - t0)
    print(f"memplan plan llama-7b --json (cold start): median {statistics.median(cold):.3f} s")


if __name__ == "__main__":
    main()
