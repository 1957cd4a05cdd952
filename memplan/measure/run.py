"""Run the real training step on a backend and return a Breakdown.

- cpu: real CPU tensors, live storage bytes tracked by `StorageTracker`;
- meta: the same HF model and torch optimizer on meta tensors (no values, exact shapes and
  dtypes), so a 7B step runs in seconds on any machine; SDPA is routed to the flash kernel's
  meta implementation and AMP uses CUDA autocast's policy (memplan.runtime.emulation);
- cuda: the allocator's peaks plus NVML (memplan.measure.cuda).

One warm-up step runs first, so lazily created optimizer state exists when the measured step
starts, as it does from the second step of a real run.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from memplan.breakdown import PHASES, Breakdown
from memplan.measure.cuda import measure_cuda, require_cuda
from memplan.methods import default_options, get_method, load_plugins
from memplan.methods.zo import ZOSettings
from memplan.models import ModelConfig, check_sequence, load_config
from memplan.runtime.context import RunContext
from memplan.workload import WORKLOAD_FIELDS, Workload


def build_step(
    cfg: ModelConfig, method: str, wl: Workload, zo: ZOSettings | None = None, **options: Any
):
    """The model, a synthetic batch and the optimizer(s) for one step of `method` on
    `wl.device` (`zo` and `options` as for `memplan.estimate.estimate`)."""
    load_plugins()
    spec = get_method(method)
    return spec.build(RunContext(cfg, spec, wl, default_options({"zo": zo, **options})))


def measure(
    model: str | ModelConfig,
    method: str = "adamw",
    workload: Workload | None = None,
    zo: ZOSettings | None = None,
    **options: Any,
) -> Breakdown:
    """Run one warm-up and one measured training step on `workload.device` (`zo` and
    `options` as for `memplan.estimate.estimate`)."""
    load_plugins()
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload(device="cpu")
    spec = get_method(method)
    check_sequence(cfg, wl.seq)
    opts = default_options({"zo": zo, **options})
    spec.check_device(wl.device, opts)
    if wl.device == "cuda":
        require_cuda()
        step = build_step(cfg, spec.name, wl, **opts)
        bd = measure_cuda(step)
        bd.info.update(step.info)
    else:
        bd = measure_tracked(cfg, spec.name, wl, opts)
    bd.info.update(
        model=cfg.name,
        family=cfg.family,
        method=spec.name,
        **{k: getattr(wl, k) for k in WORKLOAD_FIELDS},
    )
    return bd


def measure_tracked(
    cfg: ModelConfig, method: str, wl: Workload, options: dict[str, Any]
) -> Breakdown:
    """One warm-up and one measured step of `method` on cpu or meta tensors, live storage
    tracked (no device check: a caller that stubs a CUDA-only step's CUDA calls runs it)."""
    from memplan.measure.tracker import StorageTracker, model_classifier
    from memplan.runtime.emulation import emulation_modes

    t0 = time.perf_counter()
    step = build_step(cfg, method, wl, **options)
    tracker = StorageTracker(model_classifier(step.model, lambda: step.optimizers))
    tracker.register([*step.model.parameters(), *step.model.buffers(), *step.batch.values()])
    with ExitStack() as stack:
        stack.enter_context(emulation_modes(wl, autocast=False))
        stack.enter_context(tracker)
        step(tracker.set_phase)  # warm-up: optimizer state is created here
        tracker.reset_peaks()
        step(tracker.set_phase)
    phases = {k: v for k, v in tracker.peaks.items() if k in PHASES}
    return Breakdown(
        source=wl.device,
        phases=phases,
        info={
            **step.info,
            "ops": tracker.n_ops,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
