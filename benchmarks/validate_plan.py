"""The planner's recommended split against the meta simulation (prints numbers; not a test).

    python benchmarks/validate_plan.py --out docs/validation/plan-meta.jsonl [--gpu rtx4090]
    python benchmarks/validate_plan.py --out docs/validation/plan-meta.jsonl --table

For each model and sequence length: `memplan plan` on the GPU preset, then the real HF model
and torch optimizers of the recommended split K and of the split with one more FO layer
(K - 1) run on meta tensors (`memplan profile --device meta --method hybrid --zo-layers K`).
One JSON line per run, written as soon as it exists: the estimate, the simulated peak, the
named CUDA runtime terms the estimator adds, the card's memory, context and margin, and
whether the simulated step fits. tests/test_plan.py asserts the same on llama-7b/mistral-7b.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

MODELS = ["llama-7b", "mistral-7b", "llama-3-8b"]
SEQS = [512, 2048]
GB = 1e9


def run(out: Path, gpu: str) -> None:
    from memplan.estimate import estimate
    from memplan.measure.run import measure
    from memplan.methods.hybrid import HybridSettings
    from memplan.methods.zo import ZOSettings
    from memplan.plan import make_budget, plan
    from memplan.workload import Workload

    bud = make_budget(gpu)
    zs = ZOSettings(impl="chunked", chunk_elems=1 << 24)  # few chunks: a fast meta step
    with out.open("a") as sink:
        for model in MODELS:
            for seq in SEQS:
                wl = Workload(batch=1, seq=seq, dtype="bf16", device="cuda")
                p = plan(model, wl, bud, zo=zs, gpu=gpu)
                for k in (p.split, p.split - 1):
                    hs = HybridSettings(zo_layers=k)
                    t0 = time.perf_counter()
                    sim = measure(model, "hybrid", replace(wl, device="meta"), zo=zs, hybrid=hs)
                    est = estimate(model, "hybrid", wl, gpu=gpu, zo=zs, hybrid=hs)
                    need = sim.tensor_peak + est.runtime_bytes + bud.context_bytes
                    row = {
                        "model": model,
                        "seq": seq,
                        "gpu": gpu,
                        "recommended": k == p.split,
                        "zo_layers": k,
                        "estimate_tensor_peak": est.tensor_peak,
                        "meta_tensor_peak": sim.tensor_peak,
                        "rel_error": est.tensor_peak / sim.tensor_peak - 1,
                        "runtime_bytes": est.runtime_bytes,
                        "context_bytes": bud.context_bytes,
                        "margin_bytes": bud.margin_bytes,
                        "total_bytes": bud.total_bytes,
                        "meta_need_bytes": need,
                        "fits_after_margin": need <= bud.total_bytes - bud.margin_bytes,
                        "fits_card": need <= bud.total_bytes,
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    verdict = "fits" if row["fits_card"] else "does not fit"
                    print(
                        f"{model} seq {seq} K={k}: meta {sim.tensor_peak / GB:.3f} GB, est "
                        f"{row['rel_error']:+.4%}, needs {need / GB:.2f} of "
                        f"{bud.total_bytes / GB:.2f} GB: {verdict}"
                    )


def table(path: Path) -> None:
    print(
        "| model | seq | K (ZO layers) | role | meta peak (GB) | estimate error | "
        "meta + runtime + context (GB) | card (GB) | fits |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for line in path.read_text().splitlines():
        r = json.loads(line)
        role = "recommended" if r["recommended"] else "one more FO layer"
        fits = "yes, after margin" if r["fits_after_margin"] else "yes" if r["fits_card"] else "no"
        print(
            f"| {r['model']} | {r['seq']} | {r['zo_layers']} | {role} | "
            f"{r['meta_tensor_peak'] / GB:.3f} | {r['rel_error']:+.4%} | "
            f"{r['meta_need_bytes'] / GB:.3f} | {r['total_bytes'] / GB:.2f} | {fits} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpu", default="rtx4090")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out")
    args = ap.parse_args()
    if args.table:
        table(args.out)
    else:
        run(args.out, args.gpu)


if __name__ == "__main__":
    main()
