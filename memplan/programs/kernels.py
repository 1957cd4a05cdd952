"""The device kernel policy: which kernels a step runs, as far as memory is concerned.

The family programs (memplan.programs) are written once for every device; what differs by device
is decided here: the attention kernel SDPA picks and the dtype of a saved dropout mask. Element
sizes of the non-float tensors the programs allocate live here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.workload import Workload

F32 = 4
BOOL = 1
I64 = 8


@dataclass(frozen=True)
class Kernels:
    """Which kernels a device runs, as far as memory is concerned."""

    attention: str  # "eager" | "flash" | "math"
    dropout_mask_elem: int  # bytes per element of a saved dropout mask; 0: the input's dtype

    @staticmethod
    def resolve(wl: Workload, attn_dropout: float) -> Kernels:
        """SDPA's kernel by device: CUDA runs flash (dropout supported; an RNG seed is kept,
        not a mask); the CPU flash kernel refuses dropout > 0 so SDPA takes the math path; the
        meta backend routes SDPA to the flash kernel's meta implementation
        (memplan.measure.emulation). Dropout: CUDA's fused kernel keeps a bool mask; on CPU and
        meta ATen's `_dropout_impl` keeps a noise tensor in the input's dtype."""
        if wl.attn == "eager":
            att = "eager"
        elif wl.device == "cpu" and attn_dropout > 0:
            att = "math"
        else:
            att = "flash"
        return Kernels(att, BOOL if wl.device == "cuda" else 0)
