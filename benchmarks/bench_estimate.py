"""Wall times of the instant path and of the meta simulation (prints numbers; not a test).

    python benchmarks/bench_estimate.py [--runs 5]

- `memplan estimate llama-7b --method adamw`, cold start: a fresh interpreter each run, so
  the time includes Python start-up and imports (no torch, no transformers);
- the estimator alone, in-process (the tape replay of one 7B step);
- `memplan profile llama-7b --method adamw --device meta --seq 512`: the real HF model and
  torch optimizer on meta tensors (model build, warm-up step and measured step).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from memplan.cli import main; main()", *args]


def time_cmd(cmd: list[str], runs: int) -> tuple[float, float] | str:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            return f"skipped: exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    r = time_cmd(_cli(["estimate", "llama-7b", "--method", "adamw"]), args.runs)
    print(
        "memplan estimate llama-7b --method adamw (cold start): "
        + (r if isinstance(r, str) else f"median {r[0]:.3f} s, min {r[1]:.3f} s")
    )

    r = time_cmd([sys.executable, "-c", "import memplan.estimate"], args.runs)
    print(
        "import memplan.estimate: "
        + (r if isinstance(r, str) else f"median {r[0]:.3f} s, min {r[1]:.3f} s")
    )

    from memplan.estimate import estimate
    from memplan.workload import Workload

    estimate("llama-7b", "adamw", Workload(seq=512))  # warm the preset cache
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        estimate("llama-7b", "adamw", Workload(seq=512))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1e3
    print(f"estimate() llama-7b adamw seq 512, in process: median {med:.1f} ms")

    r = time_cmd(
        _cli(
            [
                "profile",
                "llama-7b",
                "--method",
                "adamw",
                "--device",
                "meta",
                "--seq",
                "512",
                "--json",
            ]
        ),
        1,
    )
    print(
        "memplan profile llama-7b --method adamw --device meta --seq 512: "
        + (r if isinstance(r, str) else f"{r[0]:.2f} s")
    )


if __name__ == "__main__":
    main()
