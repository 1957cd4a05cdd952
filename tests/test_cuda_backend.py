"""The CUDA backend: bookkeeping without a GPU, a real step on one."""

from __future__ import annotations

import pytest

from memplan.breakdown import PhasePeak
from memplan.errors import MemplanError
from memplan.measure.cuda import assemble_cuda_breakdown, require_cuda


def _peak(**cats) -> PhasePeak:
    p = PhasePeak()
    p.categories.update(cats)
    return p


def test_bookkeeping_peak_phase_context_and_overhead():
    peaks = {
        "forward": _peak(weights=100, activations=50),
        "backward": _peak(weights=100, gradients=100, activations=20),
        "optimizer": _peak(weights=100, gradients=100, optimizer_state=200),
        "end": _peak(weights=100),
    }
    bd = assemble_cuda_breakdown(
        {"forward": 160, "backward": 230, "optimizer": 420},
        {"forward": 2 << 20, "backward": 2 << 20, "optimizer": 4 << 20},
        peaks,
        nvml_used=(4 << 20) + 300,
        reserved_now=4 << 20,
        info={"x": 1},
    )
    assert set(bd.phases) == {"forward", "backward", "optimizer"}  # "end" is not a phase
    assert bd.peak_phase == "optimizer"
    assert bd.tensor_peak == 400
    assert bd.runtime == {"allocator_overhead": 20}
    assert bd.peak == 420  # equals the allocator's max_memory_allocated
    assert bd.context_bytes == 300  # NVML used minus what torch reserved
    assert bd.measured["allocated_peak_backward"] == 230
    assert bd.measured["reserved_peak"] == 4 << 20


def test_overhead_is_never_negative_and_nvml_is_optional():
    bd = assemble_cuda_breakdown(
        {"forward": 10},
        {"forward": 10},
        {"forward": _peak(weights=12)},
        nvml_used=None,
        reserved_now=0,
        info={},
    )
    assert bd.runtime["allocator_overhead"] == 0
    assert bd.context_bytes == 0 and "nvml_used" not in bd.measured


def test_require_cuda_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MemplanError, match="--device cpu or --device meta"):
        require_cuda()


@pytest.mark.cuda
def test_tiny_step_on_cuda_matches_tracker():
    from memplan.measure.run import measure
    from memplan.workload import Workload

    bd = measure("tiny-llama", "adamw", Workload(batch=2, seq=64, dtype="bf16", device="cuda"))
    alloc = bd.measured["allocated_peak"]
    assert alloc >= bd.tensor_peak
    assert alloc <= bd.tensor_peak * 1.10 + (40 << 20)  # + cuBLAS workspace
