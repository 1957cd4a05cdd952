"""Seeded, counter-based Gaussian noise for zeroth-order (MeZO-style) fine-tuning.

z is a pure function of (seed, element offset), so it is never stored: the optimizer perturbs
parameters in place by +eps z, -2 eps z, +eps z and regenerates z for the update.

    from memplan_kernels import perturb_, noise, zo_update_, triton_available, IMPLS
    from memplan_kernels.memory import temporary_bytes   # torch-free

Implementations (`IMPLS`): "fused" (Triton kernels, nothing allocated), "chunked" (plain
PyTorch, the same stream, one bounded workspace), "reference" (MeZO's per-tensor torch.normal).
See `memplan_kernels.api` for the functions and docs/kernels.md for the design.

This package module imports neither torch nor triton: the torch-backed functions are loaded on
first access (PEP 562 module __getattr__), so `import memplan_kernels.memory` stays instant for
memplan's analytic estimator.

Known limitations: see `memplan_kernels.api` (contiguous fp32/bf16/fp16 tensors only) and
`memplan_kernels.rng` (|z| <= 5.77, 24-bit uniforms).
"""

from __future__ import annotations

from typing import Any

from memplan_kernels.memory import IMPLS, temporary_bytes

_LAZY = ("RULES", "noise", "perturb_", "triton_available", "zo_update_")

__all__ = ["IMPLS", "temporary_bytes", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from memplan_kernels import api

        return getattr(api, name)
    raise AttributeError(f"module 'memplan_kernels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
