"""The CUDA backend: the caching allocator's peaks per phase, plus NVML.

The truth for a GPU run is `torch.cuda.max_memory_allocated()` over the measured step (after a
warm-up step, so lazily created optimizer state and cuBLAS workspaces exist), read and reset at
every phase boundary; `max_memory_reserved()` shows what the caching allocator held, and NVML's
device-used memory what nvidia-smi shows (CUDA context included). The live-storage tracker runs
alongside to split each phase's peak into categories; the allocator's excess over the
tracker's tensor peak (512-byte rounding, cuBLAS workspace, anything not seen as a tensor) is
reported as the runtime term `allocator_overhead`.
"""

from __future__ import annotations

import os
from typing import Any

from memplan.breakdown import PHASES, Breakdown, PhasePeak
from memplan.errors import MemplanError


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise MemplanError(
            "--device cuda needs a CUDA GPU, but torch.cuda.is_available() is False on this "
            "machine; use --device cpu or --device meta"
        )


def assemble_cuda_breakdown(
    phase_allocated: dict[str, int],
    phase_reserved: dict[str, int],
    tracker_peaks: dict[str, PhasePeak],
    nvml_used: int | None,
    reserved_now: int,
    info: dict[str, Any],
) -> Breakdown:
    """Turn raw counter readings into a Breakdown (pure bookkeeping, testable without a GPU)."""
    phases = {p: tracker_peaks[p] for p in PHASES if p in tracker_peaks}
    measured: dict[str, int] = {}
    for p in phases:
        measured[f"allocated_peak_{p}"] = int(phase_allocated.get(p, 0))
        measured[f"reserved_peak_{p}"] = int(phase_reserved.get(p, 0))
    alloc_peak = max((int(phase_allocated.get(p, 0)) for p in phases), default=0)
    measured["allocated_peak"] = alloc_peak
    measured["reserved_peak"] = max((int(phase_reserved.get(p, 0)) for p in phases), default=0)
    bd = Breakdown(source="cuda", phases=phases, info=dict(info), measured=measured)
    bd.runtime = {"allocator_overhead": max(0, alloc_peak - bd.tensor_peak)}
    if nvml_used is not None:
        measured["nvml_used"] = int(nvml_used)
        bd.context_bytes = max(0, int(nvml_used) - int(reserved_now))
    return bd


def nvml_used_bytes(device_index: int = 0) -> int | None:
    """Device memory in use as nvidia-smi shows it (all processes), or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            index = int(visible.split(",")[device_index]) if visible else device_index
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except (pynvml.NVMLError, ValueError, IndexError):
        return None


def measure_cuda(step, warmup_steps: int = 1, device_index: int = 0) -> Breakdown:
    """Run `warmup_steps` steps, then one measured step with per-phase allocator peaks."""
    import torch

    from memplan.measure.tracker import StorageTracker, model_classifier

    require_cuda()
    dev = torch.device("cuda", device_index)
    for _ in range(warmup_steps):
        step(lambda _phase: None)
    torch.cuda.synchronize(dev)
    tracker = StorageTracker(model_classifier(step.model, lambda: step.optimizers))
    tracker.register([*step.model.parameters(), *step.model.buffers(), *step.batch.values()])
    allocated: dict[str, int] = {}
    reserved: dict[str, int] = {}
    current: list[str | None] = [None]

    def hook(phase: str) -> None:
        torch.cuda.synchronize(dev)
        prev = current[0]
        if prev is not None:  # a phase may recur (ZO: forward, perturbation, forward, ...)
            allocated[prev] = max(allocated.get(prev, 0), torch.cuda.max_memory_allocated(dev))
            reserved[prev] = max(reserved.get(prev, 0), torch.cuda.max_memory_reserved(dev))
        torch.cuda.reset_peak_memory_stats(dev)
        current[0] = phase
        tracker.set_phase(phase)

    torch.cuda.reset_peak_memory_stats(dev)
    with tracker:
        step(hook)
    torch.cuda.synchronize(dev)
    info = {
        "device_name": torch.cuda.get_device_name(dev),
        "total_memory": torch.cuda.get_device_properties(dev).total_memory,
    }
    return assemble_cuda_breakdown(
        allocated,
        reserved,
        tracker.peaks,
        nvml_used_bytes(device_index),
        torch.cuda.memory_reserved(dev),
        info,
    )
