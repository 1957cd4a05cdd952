"""Perturbation throughput on a CUDA GPU: fused Triton kernel vs torch.randn + add_ vs chunked.

    python benchmarks/bench_kernels.py [--shapes 4096x4096,32000x4096] [--dtypes fp32,bf16]
                                       [--iters 20] [--chunk 1048576] [--out FILE.jsonl]

For each shape and dtype it times one in-place perturbation x += eps z of a tensor of that
shape (CUDA events, median of --iters after 3 warm-ups) with:

- fused: memplan_kernels.perturb_(impl="fused"), one kernel, reads and writes x once;
- randn+add_: z = torch.randn_like(x); x.add_(z, alpha=eps) (MeZO's pattern; one temporary z);
- chunked: memplan_kernels.perturb_(impl="chunked"), the plain-PyTorch fallback.

Achieved bandwidth = bytes the method must move / time, in GB/s (10**9 bytes/s): fused and
chunked 2 N e (read x, write x; the chunked impl's workspace traffic is extra and not counted),
randn+add_ 4 N e (write z; read x and z; write x). `extra MiB` is the peak of
torch.cuda.max_memory_allocated above the tensor during one call, next to
memplan_kernels.memory.temporary_bytes (MiB = 2**20 bytes).

Without CUDA it prints one line and exits 2. Not a test; numbers go to docs/ with the GPU named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
EPS = 1e-3  # memplan.methods.zo.ZOSettings.eps default: the epsilon of MeZO's runs
WARMUP = 3  # first launches include Triton's compile and the caching allocator's growth


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        a, _, b = item.lower().partition("x")
        out.append((int(a), int(b)))
    return out


def time_ms(fn: Callable[[], None], iters: int) -> float:
    """Median wall time of fn() in ms from CUDA events."""
    import torch

    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def extra_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak allocated bytes above the current allocation during one call of fn."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def run(shapes: list[tuple[int, int]], dtypes: list[str], iters: int, chunk: int) -> list[dict]:
    import torch

    from memplan_kernels import perturb_, triton_available
    from memplan_kernels.memory import temporary_bytes

    rows = []
    fused_ok = triton_available("cuda")
    for rows_, cols in shapes:
        for name in dtypes:
            dtype = getattr(torch, DTYPES[name])
            x = torch.randn(rows_, cols, dtype=dtype, device="cuda")
            n, e = x.numel(), x.element_size()

            def randn_add(x=x) -> None:
                z = torch.randn_like(x)
                x.add_(z, alpha=EPS)
                del z

            methods = {
                "fused": (lambda x=x: perturb_(x, 1, EPS, impl="fused"), 2, "fused"),
                "randn+add_": (randn_add, 4, "reference"),
                "chunked": (
                    lambda x=x: perturb_(x, 1, EPS, impl="chunked", chunk_elems=chunk),
                    2,
                    "chunked",
                ),
            }
            for method, (fn, passes, impl) in methods.items():
                row = {"shape": f"{rows_}x{cols}", "dtype": name, "method": method}
                if method == "fused" and not fused_ok:
                    row["skipped"] = "triton not available"
                    rows.append(row)
                    continue
                ms = time_ms(fn, iters)
                row.update(
                    time_ms=round(ms, 4),
                    bytes_moved=passes * n * e,
                    gb_per_s=round(passes * n * e / (ms * 1e-3) / 1e9, 1),
                    extra_peak_bytes=extra_peak_bytes(fn),
                    temporary_bytes=temporary_bytes(n, e, impl, chunk),
                )
                rows.append(row)
            del x
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    mib = 2**20
    lines = [
        "| shape | dtype | method | time (ms) | GB/s | extra MiB (measured) | extra MiB (model) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['shape']} | {r['dtype']} | {r['method']} | {r['skipped']} ||||")
            continue
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['method']} | {r['time_ms']:.3f} | "
            f"{r['gb_per_s']:.0f} | {r['extra_peak_bytes'] / mib:.1f} | "
            f"{r['temporary_bytes'] / mib:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,32000x4096")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=1 << 20)
    ap.add_argument("--out", type=Path, help="write one JSON line per row")
    args = ap.parse_args(argv)
    try:
        shapes = _parse_shapes(args.shapes)
    except ValueError:
        print(f"--shapes must look like 4096x4096,32000x4096; got {args.shapes!r}")
        return 2
    dtypes = args.dtypes.split(",")
    if unknown := [d for d in dtypes if d not in DTYPES]:
        print(f"--dtypes must be among {', '.join(DTYPES)}; got {', '.join(unknown)}")
        return 2

    import torch

    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing run")
        return 2
    rows = run(shapes, dtypes, args.iters, args.chunk)
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}, eps {EPS}, chunk {args.chunk} elements\n")
    print(table(rows))
    if args.out:
        with args.out.open("w") as f:
            for r in rows:
                f.write(json.dumps({"gpu": gpu, "torch": torch.__version__, **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
