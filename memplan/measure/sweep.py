"""Profile sweeps: one measured training step per workload, each row saved the moment it exists.

`profile(...)` is what `memplan profile` runs:
1. estimate every point first (no torch) and give each its key (memplan.rows: model, method,
   workload, method settings);
2. on `--device cpu`, refuse a sweep whose largest step the host cannot hold (the fit rule of
   memplan.gpus against MemAvailable), unless forced: the estimate knows before the run dies;
3. skip the points whose row is already in `--out` (a rerun after an interruption or an OOM
   measures only what is missing, and duplicates nothing);
4. measure the rest one by one, appending each row to `--out` at once. An out-of-memory
   error, told by its exception class (`torch.OutOfMemoryError`, `torch.cuda.OutOfMemoryError`,
   `MemoryError`), becomes a row saying so and the sweep goes on; Ctrl-C stops it and the
   report holds every finished point (the CLI exits 130).

torch is imported only when a point is measured (by memplan.measure.run).

Known limitations: the Linux OOM killer ends the process without an exception (the rows
written before it are kept); a point interrupted mid-step is lost and measured again on rerun.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memplan.breakdown import Breakdown, fmt_bytes
from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.gpus import Budget
from memplan.measure.run import measure
from memplan.methods import default_options, get_method
from memplan.models import ModelConfig, load_config
from memplan.rows import (
    RowWriter,
    oom_row,
    point_key,
    profile_row,
    read_rows,
    row_key,
    settings_dict,
)
from memplan.workload import WORKLOAD_FIELDS, Workload


@dataclass(frozen=True)
class Point:
    """One sweep point: its workload, its estimate and its key."""

    workload: Workload
    estimate: Breakdown
    key: str


@dataclass
class SweepReport:
    """What a sweep finished: every point's row in sweep order (those read back from `out`
    included), how many were measured now and how many skipped, and whether Ctrl-C ended it."""

    model: str
    method: str
    device: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    measured: int = 0
    skipped: int = 0
    total: int = 0
    out: str | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "device": self.device,
            "points": self.total,
            "measured": self.measured,
            "skipped": self.skipped,
            "out": self.out,
            "interrupted": self.interrupted,
            "warnings": self.warnings,
            "rows": self.rows,
        }


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error, by class (never by message): MemoryError, or
    torch's OutOfMemoryError (CPU and CUDA allocators) when torch is loaded."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # not loaded: the exception cannot be torch's
    if torch is None:
        return False
    classes = tuple(
        c
        for c in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
        )
        if isinstance(c, type)
    )
    return bool(classes) and isinstance(exc, classes)


def make_points(
    cfg: ModelConfig, method: str, workloads: Sequence[Workload], options: Mapping[str, Any]
) -> list[Point]:
    """Estimate every workload (no torch) and key it."""
    settings = settings_dict(options)
    points = []
    for wl in workloads:
        est = estimate(cfg, method, wl, **options)
        wl_dict = {k: getattr(wl, k) for k in WORKLOAD_FIELDS}
        points.append(Point(wl, est, point_key(cfg.name, est.info["method"], wl_dict, settings)))
    return points


def check_host_fit(points: Sequence[Point], budget: Budget) -> None:
    """Refuse a CPU sweep whose largest estimated step does not fit the host's memory."""
    worst = max(points, key=lambda p: p.estimate.peak)
    fit = budget.fit(worst.estimate.peak)
    if not fit.fits:
        raise MemplanError(
            f"the step at --seq {worst.workload.seq} needs about "
            f"{fmt_bytes(worst.estimate.peak)} (estimate) but the host has "
            f"{fmt_bytes(budget.total_bytes)} available (MemAvailable, "
            f"{fmt_bytes(budget.margin_bytes)} margin kept): lower --seq/--batch, use "
            "--device meta, or pass --force to run it anyway"
        )


MeasureFn = Callable[[Point], Breakdown]


def measured_options(method: str, opts: dict[str, Any], est: Breakdown) -> dict[str, Any]:
    """The options a measurement runs with: a method whose estimate weighs several kinds of
    step (`MethodSpec.step_kinds`, GaLore's "both") is measured at the kind that peaks."""
    spec = get_method(method)
    kinds = spec.step_kinds(default_options(opts)) if spec.step_kinds is not None else None
    if kinds is None:
        return opts
    prefix, variants = kinds
    return variants.get(est.info.get(f"{prefix}_step"), variants[list(variants)[-1]])


def default_measure(cfg: ModelConfig, method: str, options: Mapping[str, Any]) -> MeasureFn:
    """Measure a point with memplan.measure.run (imports torch on the first call)."""

    def run(point: Point) -> Breakdown:
        opts = measured_options(method, dict(options), point.estimate)
        return measure(cfg, method, point.workload, **opts)

    return run


def _release_memory() -> None:
    """After an OOM: drop the failed step's tensors and hand cached CUDA blocks back."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_sweep(
    points: Sequence[Point],
    measure: MeasureFn,
    settings: Mapping[str, Any],
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int, int, bool]:
    """Measure the points not yet in `out`, appending each row at once.

    Returns (rows in point order, measured now, skipped, interrupted)."""
    done: dict[str, dict[str, Any]] = {}
    if out is not None:
        for row in read_rows(out, allow_empty=True):
            key = row_key(row)
            if key is not None:
                done.setdefault(key, row)
    todo = [p for p in points if p.key not in done]
    skipped = len(points) - len(todo)
    measured = 0
    interrupted = False
    writer = RowWriter(out) if out is not None else None
    try:
        if writer is not None:
            writer.__enter__()
        for i, point in enumerate(todo):
            oom = None
            try:
                if progress is not None:
                    progress(i, len(todo))
                row = profile_row(point.estimate, measure(point), settings)
            except KeyboardInterrupt:
                interrupted = True
                break
            except Exception as e:
                if not is_oom(e):
                    raise
                oom = f"{type(e).__name__}: {e}"
            if oom is not None:  # outside the except block: the failed step's frames are gone
                _release_memory()
                row = oom_row(point.estimate, oom, settings)
            done[point.key] = row
            measured += 1
            if writer is not None:
                try:
                    writer.write(row)
                except KeyboardInterrupt:  # the row is whole: Ctrl-C came during the write
                    interrupted = True
                    break
        else:
            if progress is not None:
                progress(len(todo), len(todo))
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
    rows = [done[p.key] for p in points if p.key in done]
    return rows, measured, skipped, interrupted


def profile(
    model: str | ModelConfig,
    method: str,
    workloads: Sequence[Workload],
    options: Mapping[str, Any],
    out: Path | None = None,
    host: Budget | None = None,
    measure: MeasureFn | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SweepReport:
    """Measure `method` at each workload and compare with the estimate (see the module
    docstring). `host`: the budget a CPU sweep must fit (None: no check, e.g. --force)."""
    if not workloads:
        raise MemplanError("a sweep needs at least one --seq")
    cfg = load_config(model) if isinstance(model, str) else model
    points = make_points(cfg, method, workloads, options)
    if host is not None:
        check_host_fit(points, host)
    settings = settings_dict(options)
    rows, measured, skipped, interrupted = run_sweep(
        points,
        measure or default_measure(cfg, method, options),
        settings,
        out=out,
        progress=progress,
    )
    return SweepReport(
        model=cfg.name,
        method=points[0].estimate.info["method"],
        device=workloads[0].device,
        rows=rows,
        measured=measured,
        skipped=skipped,
        total=len(points),
        out=str(out) if out is not None else None,
        interrupted=interrupted,
    )
