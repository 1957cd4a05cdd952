"""Estimate vs measured across presets and sequence lengths; raw rows to JSONL, a table to stdout.

    python benchmarks/validate.py --device meta --out docs/validation/meta.jsonl
    python benchmarks/validate.py --device cpu --out docs/validation/cpu.jsonl

Each row is written as soon as it exists (an interruption loses nothing taken so far). The
printed markdown table is what docs/validation.md shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memplan.estimate import estimate
from memplan.measure.run import measure
from memplan.models import load_config
from memplan.rows import profile_row
from memplan.workload import Workload

GRID = {
    "meta": [
        (m, "adamw", s, d)
        for m in ("llama-7b", "mistral-7b", "opt-13b")
        for s in (256, 512, 1024, 2048)
        for d in ("bf16", "amp")
    ]
    + [("roberta-large", "adamw", s, d) for s in (128, 256, 512) for d in ("bf16", "amp")]
    + [("llama-7b", m, 512, "bf16") for m in ("fo-sgd", "fo-sgd-mmt", "fo-adam", "adafactor")],
    "cpu": [
        (m, meth, s, d)
        for m in ("tiny-llama", "tiny-mistral", "tiny-opt", "tiny-roberta")
        for meth in ("fo-sgd", "adamw", "adafactor")
        for s in (64, 128, 256)
        for d in ("fp32", "bf16", "amp")
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=sorted(GRID), default="meta")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--table", action="store_true", help="print the table of an existing --out")
    args = ap.parse_args()
    if args.table:
        print_table([json.loads(line) for line in args.out.read_text().splitlines()])
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print("| model | method | seq | dtype | estimated peak (GiB) | measured peak (GiB) | error |")
    print("|---|---|---|---|---|---|---|")
    with args.out.open("w") as sink:
        for model, method, seq, dtype in GRID[args.device]:
            cfg = load_config(model)
            wl = Workload(
                batch=1 if args.device == "meta" else 2, seq=seq, dtype=dtype, device=args.device
            )
            t0 = time.perf_counter()
            row = profile_row(estimate(cfg, method, wl), measure(cfg, method, wl))
            row["seconds"] = round(time.perf_counter() - t0, 2)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            e, m = row["estimate"]["tensor_peak_bytes"], row["measured"]["tensor_peak_bytes"]
            print(
                f"| {model} | {method} | {seq} | {dtype} | {e / 2**30:.3f} | {m / 2**30:.3f} "
                f"| {row['rel_error']['peak'] * 100:+.3f} % |",
                flush=True,
            )


def print_table(rows: list[dict]) -> None:
    """Per-phase relative errors of each row, and the worst absolute error per phase."""
    phases = ("forward", "backward", "optimizer")
    print(
        "| model | method | seq | dtype | peak phase | peak (GiB) | "
        + " | ".join(f"{p} error" for p in phases)
        + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(phases))
    worst = dict.fromkeys(phases, 0.0)
    for r in rows:
        e, m = r["estimate"], r["measured"]
        errs = []
        for p in phases:
            x = sum(e["phases"][p].values()) / sum(m["phases"][p].values()) - 1
            worst[p] = max(worst[p], abs(x))
            errs.append(f"{x * 100:+.3f} %")
        info = m["info"]
        print(
            f"| {info['model']} | {info['method']} | {info['seq']} | {info['dtype']} | "
            f"{m['peak_phase']} | {m['tensor_peak_bytes'] / 2**30:.3f} | " + " | ".join(errs) + " |"
        )
    print()
    print("worst |error| per phase: " + ", ".join(f"{p} {v * 100:.3f} %" for p, v in worst.items()))


if __name__ == "__main__":
    main()
