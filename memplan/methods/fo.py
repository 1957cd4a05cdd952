"""First-order optimizers: their memory model and their runnable construction, side by side.

Memory model (per parameter tensor of `numel` elements, `elem` bytes each; state is created
lazily at the first `step()` and has the parameter's dtype unless said otherwise):

| method      | state kept across steps                       | peak temporary inside step()  |
|-------------|-----------------------------------------------|-------------------------------|
| fo-sgd      | none                                          | none (in-place foreach add)   |
| fo-sgd-mmt  | momentum_buffer (numel)                       | none                          |
| fo-adam     | exp_avg + exp_avg_sq (2 numel) + fp32 step    | foreach: sqrt(exp_avg_sq) for |
| adamw       |   (4 bytes, a CPU scalar tensor)              |   all params at once (P);     |
|             |                                               | forloop: 2 x largest tensor;  |
|             |                                               | fused: none                   |
| adafactor   | matrices: row (m) + column (n) second moment; | forloop: largest tensor (the  |
|             | vectors: full second moment; fp32 step        |   row@col estimate), 2x for a |
|             |                                               |   vector; foreach: all of a   |
|             |                                               |   group's estimates at once   |
| adam8bit    | 2 x 1-byte states + fp32 absmax per 256-value | none (in-place CUDA kernels)  |
|             |   block; tensors < 4096 values: 2 x fp32      |                               |

Derived from torch/optim/{sgd,adam,adamw,_adafactor}.py (torch 2.13: `_multi_tensor_adam`
calls `torch._foreach_sqrt(exp_avg_sqs)` for the whole group before `_foreach_addcdiv_`;
`_single_tensor_adam` computes `(exp_avg_sq.sqrt() / bias_correction2_sqrt)`, two temporaries
alive together) and bitsandbytes' Optimizer8bit (block-wise states, blocksize 256,
min_8bit_size 4096); checked against the cpu and meta backends (tests/test_estimate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil, prod

from memplan.errors import MemplanError

STEP_BYTES = 4  # torch keeps `state["step"]` as a float32 scalar tensor per parameter
BNB_BLOCK = 256  # bitsandbytes block-wise quantization block for 8-bit optimizer states
BNB_MIN_8BIT = 4096  # bitsandbytes `min_8bit_size`: smaller tensors keep 32-bit states
BNB_QMAP_BYTES = 2 * 256 * 4  # two fp32 quantization maps (signed, unsigned), 256 entries


@dataclass(frozen=True)
class OptimizerMemory:
    state_bytes: int  # kept across steps
    step_temp_bytes: int  # transient peak inside one step()


def fo_memory(
    method: str, shapes: Sequence[tuple[int, ...]], elem: int, impl: str
) -> OptimizerMemory:
    """State and step temporaries of `method` over trainable tensors of `shapes`."""
    numels = [prod(s) for s in shapes]
    total = sum(numels)
    if method == "fo-sgd":
        return OptimizerMemory(0, 0)
    if method == "fo-sgd-mmt":
        return OptimizerMemory(total * elem, 0)
    if method in ("fo-adam", "adamw"):
        state = 2 * total * elem + STEP_BYTES * len(numels)
        temp = {"foreach": total, "forloop": _adam_forloop_peak(numels), "fused": 0}[impl]
        return OptimizerMemory(state, temp * elem)
    if method == "adafactor":
        state = STEP_BYTES * len(shapes)
        mats, vecs = 0, 0
        for s, n in zip(shapes, numels):
            if len(s) >= 2:
                state += (prod(s[:-1]) + prod(s[:-2]) * s[-1]) * elem
                mats += n
            else:
                state += n * elem
                vecs += n
        if impl == "fused":
            raise MemplanError("adafactor has no fused implementation; use foreach or forloop")
        temp = max(mats, vecs) if impl == "foreach" else _adafactor_forloop_peak(shapes)
        return OptimizerMemory(state, temp * elem)
    if method == "adam8bit":
        state = BNB_QMAP_BYTES
        for n in numels:
            if n < BNB_MIN_8BIT:
                state += 2 * n * 4
            else:
                state += 2 * (n + ceil(n / BNB_BLOCK) * 4)
        return OptimizerMemory(state, 0)
    raise MemplanError(f"no first-order memory model for method '{method}'")


def _adam_forloop_peak(numels: Sequence[int]) -> int:
    """`_single_tensor_adam`: `denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)` holds two
    temporaries of the current tensor while the previous iteration's `denom` is still bound."""
    peak, prev = 0, 0
    for n in numels:
        peak = max(peak, prev + 2 * n)
        prev = n
    return peak


def _adafactor_forloop_peak(shapes: Sequence[tuple[int, ...]]) -> int:
    """`_single_tensor_adafactor` in parameter order: row_mean, col_mean and var_estimate
    (the full m x n estimate row_var @ col_var) of a matrix, grad_squared and a clone of the
    variance of a vector; each stays bound until the same line runs for a later parameter."""
    peak = var = gsq = row = col = 0
    for s in shapes:
        base = var + gsq + row + col
        if len(s) >= 2:
            m, n = prod(s[:-1]), prod(s[:-2]) * s[-1]
            peak = max(peak, base + m)
            row = m
            peak = max(peak, var + gsq + row + col + n)
            col = n
            mn = prod(s)
            peak = max(peak, var + gsq + row + col + mn + n)  # + row_var.mean(-2)
            var = mn
        else:
            n = prod(s)
            peak = max(peak, base + n)
            gsq = n
            peak = max(peak, var + gsq + row + col + n)
            var = n
    return peak


def make_optimizer(method: str, params, impl: str, lr: float = 1e-3, weight_decay: float = 0.0):
    """The torch (or bitsandbytes) optimizer that `method` names, with the chosen impl."""
    import torch

    flags = {"foreach": {"foreach": True}, "forloop": {"foreach": False}, "fused": {"fused": True}}
    kw = flags[impl]
    if method == "fo-sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **kw)
    if method == "fo-sgd-mmt":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **kw)
    if method == "fo-adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)
    if method == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay or 0.01, **kw)
    if method == "adafactor":
        if impl == "fused":
            raise MemplanError("adafactor has no fused implementation; use foreach or forloop")
        return torch.optim.Adafactor(params, lr=lr * 10, **kw)
    if method == "adam8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise MemplanError(
                "adam8bit needs bitsandbytes and a CUDA GPU (pip install bitsandbytes)"
            ) from e
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise MemplanError(f"'{method}' is not a first-order optimizer")
