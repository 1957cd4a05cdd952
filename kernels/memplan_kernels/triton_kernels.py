"""The `fused` implementation: raw @triton.jit kernels and their launchers.

Each program handles BLOCK consecutive elements = BLOCK // 2 pair counters of the stream in
`memplan_kernels.rng`; the tile is [BLOCK // 2, 2] (column 0 takes r cos(theta), column 1
r sin(theta)), so consecutive addresses stay consecutive in memory. Indices are int64 throughout
(tensors and offsets beyond 2**31 / 2**32 elements). Compute is fp32; stores round to the
tensor's dtype (bf16 by an explicit integer round-to-nearest-even, identical on GPU and in the
interpreter, whose own fp32 -> bf16 cast truncates). Kernels are launched with
enable_fp_fusion=False so `p + s * z` is a rounded multiply then a rounded add, as in the PyTorch
path, and use sqrt_rn / div_rn (IEEE) instead of the approximate defaults.

Kernels: `_noise_kernel` (writes z), `_perturb_kernel` (x += scale z), and one update kernel per
rule family: `_sgd_kernel` (sgd, and sign with g replaced by sign(g) on the host: identical
arithmetic), `_momentum_kernel`, `_adam_kernel`. None allocates anything.

Importing this module decorates the kernels: with TRITON_INTERPRET=1 in the environment at that
moment they become interpreted (run on CPU tensors through numpy); `INTERPRETED` records which.

Known limitations: performance untuned (BLOCK = 1024 and num_warps = 4, from Triton's vector-add
tutorial, not a measurement); tensors must be contiguous; under the interpreter log/cos/sin are
numpy's, on CUDA Triton's backend libm, so z differs from the PyTorch path by fp32 ulps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from memplan_kernels import rng

if TYPE_CHECKING:
    import torch

# Triton's tutorial 01 (vector add) uses BLOCK_SIZE=1024 with the default 4 warps; unmeasured
# here (no GPU): benchmarks/bench_kernels.py times it on one.
BLOCK = 1024
NUM_WARPS = 4

_M1 = tl.constexpr(rng.LOWBIAS_MUL1)
_M2 = tl.constexpr(rng.LOWBIAS_MUL2)
_S1 = tl.constexpr(rng.LOWBIAS_SHIFT1)
_S2 = tl.constexpr(rng.LOWBIAS_SHIFT2)
_S3 = tl.constexpr(rng.LOWBIAS_SHIFT3)
_USHIFT = tl.constexpr(rng.UNIFORM_SHIFT)
_U24 = tl.constexpr(rng.U24)
_TWO_PI_U24 = tl.constexpr(rng.TWO_PI_U24)

_SCALARS = ["n", "c0", "shift", "k0", "k1", "k2", "k3"]


@triton.jit
def _lowbias32(x):
    x ^= x >> _S1
    x *= _M1
    x ^= x >> _S2
    x *= _M2
    x ^= x >> _S3
    return x


@triton.jit
def _normal_tile(n, c0, shift, k0, k1, k2, k3, BLOCK: tl.constexpr):
    """z, int64 element indices and mask of this program's [BLOCK // 2, 2] tile."""
    pid = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK // 2)
    c = c0.to(tl.int64) + pid * (BLOCK // 2) + i
    lo = (c & 0xFFFFFFFF).to(tl.uint32)
    hi = (c >> 32).to(tl.uint32)
    hi ^= _lowbias32(lo ^ k0.to(tl.uint32, bitcast=True))
    lo ^= _lowbias32(hi ^ k1.to(tl.uint32, bitcast=True))
    hi ^= _lowbias32(lo ^ k2.to(tl.uint32, bitcast=True))
    lo ^= _lowbias32(hi ^ k3.to(tl.uint32, bitcast=True))
    u1 = ((hi >> _USHIFT) + 1).to(tl.float32) * _U24
    r = tl.sqrt_rn(tl.log(u1) * -2.0)
    theta = (lo >> _USHIFT).to(tl.float32) * _TWO_PI_U24
    z0 = r * tl.cos(theta)
    z1 = r * tl.sin(theta)
    col = tl.arange(0, 2)
    loc = (pid * BLOCK + 2 * i - shift)[:, None] + col[None, :]
    mask = (loc >= 0) & (loc < n)
    z = tl.where(col[None, :] == 0, z0[:, None], z1[:, None])
    return z, loc, mask


@triton.jit
def _to_dtype(x, dtype: tl.constexpr):
    """fp32 -> dtype, round to nearest even (bf16 by integer arithmetic, NaN kept as NaN)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (bits >> 16).to(tl.uint16)
        out = tl.where(x != x, 0x7FC0, out).to(tl.uint16)
        return out.to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit(do_not_specialize=_SCALARS)
def _noise_kernel(out_ptr, n, c0, shift, k0, k1, k2, k3, BLOCK: tl.constexpr):
    z, loc, mask = _normal_tile(n, c0, shift, k0, k1, k2, k3, BLOCK)
    tl.store(out_ptr + loc, _to_dtype(z, out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SCALARS + ["scale"])
def _perturb_kernel(x_ptr, n, c0, shift, k0, k1, k2, k3, scale, BLOCK: tl.constexpr):
    z, loc, mask = _normal_tile(n, c0, shift, k0, k1, k2, k3, BLOCK)
    x = tl.load(x_ptr + loc, mask=mask).to(tl.float32)
    x = x + scale * z
    tl.store(x_ptr + loc, _to_dtype(x, x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_estimate(z, p, g, wd, HAS_WD: tl.constexpr):
    gz = g * z
    if HAS_WD:
        gz = gz + wd * p
    return gz


@triton.jit(do_not_specialize=_SCALARS + ["lr", "g", "wd"])
def _sgd_kernel(
    p_ptr, n, c0, shift, k0, k1, k2, k3, lr, g, wd, HAS_WD: tl.constexpr, BLOCK: tl.constexpr
):
    z, loc, mask = _normal_tile(n, c0, shift, k0, k1, k2, k3, BLOCK)
    p = tl.load(p_ptr + loc, mask=mask).to(tl.float32)
    gz = _grad_estimate(z, p, g, wd, HAS_WD)
    p = p - lr * gz
    tl.store(p_ptr + loc, _to_dtype(p, p_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SCALARS + ["lr", "g", "wd", "beta"])
def _momentum_kernel(
    p_ptr,
    m_ptr,
    n,
    c0,
    shift,
    k0,
    k1,
    k2,
    k3,
    lr,
    g,
    wd,
    beta,
    HAS_WD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    z, loc, mask = _normal_tile(n, c0, shift, k0, k1, k2, k3, BLOCK)
    p = tl.load(p_ptr + loc, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + loc, mask=mask).to(tl.float32)
    gz = _grad_estimate(z, p, g, wd, HAS_WD)
    m = beta * m + gz
    tl.store(m_ptr + loc, _to_dtype(m, m_ptr.dtype.element_ty), mask=mask)
    p = p - lr * m
    tl.store(p_ptr + loc, _to_dtype(p, p_ptr.dtype.element_ty), mask=mask)


@triton.jit(
    do_not_specialize=_SCALARS + ["g", "wd", "b1", "c1", "b2", "c2", "inv_bc2", "step_size", "eps"]
)
def _adam_kernel(
    p_ptr,
    m_ptr,
    v_ptr,
    n,
    c0,
    shift,
    k0,
    k1,
    k2,
    k3,
    g,
    wd,
    b1,
    c1,
    b2,
    c2,
    inv_bc2,
    step_size,
    eps,
    HAS_WD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    z, loc, mask = _normal_tile(n, c0, shift, k0, k1, k2, k3, BLOCK)
    p = tl.load(p_ptr + loc, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + loc, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + loc, mask=mask).to(tl.float32)
    gz = _grad_estimate(z, p, g, wd, HAS_WD)
    m = b1 * m + c1 * gz
    v = b2 * v + c2 * (gz * gz)
    tl.store(m_ptr + loc, _to_dtype(m, m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + loc, _to_dtype(v, v_ptr.dtype.element_ty), mask=mask)
    d = tl.sqrt_rn(v * inv_bc2) + eps
    p = p - step_size * tl.div_rn(m, d)
    tl.store(p_ptr + loc, _to_dtype(p, p_ptr.dtype.element_ty), mask=mask)


INTERPRETED = isinstance(_noise_kernel, InterpretedFunction)


# ---- launchers -----------------------------------------------------------------------------------
def _stream_args(n: int, seed: int, offset: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(grid, (n, c0, shift, k0..k3)): tile 0 starts at the even element offset - shift."""
    shift = offset & 1
    keys = tuple(rng.as_int32(k) for k in rng.round_keys(seed))
    return (triton.cdiv(n + shift, BLOCK),), (n, offset >> 1, shift, *keys)


_LAUNCH = {"BLOCK": BLOCK, "num_warps": NUM_WARPS, "enable_fp_fusion": False}


def noise_(out: torch.Tensor, seed: int, offset: int) -> None:
    """out[:] = z[offset : offset + out.numel()] (out contiguous)."""
    n = out.numel()
    if n:
        grid, args = _stream_args(n, seed, offset)
        _noise_kernel[grid](out, *args, **_LAUNCH)


def perturb_(x: torch.Tensor, seed: int, scale: float, offset: int) -> None:
    """x += scale * z[offset : offset + x.numel()] in place (x contiguous)."""
    n = x.numel()
    if n:
        grid, args = _stream_args(n, seed, offset)
        _perturb_kernel[grid](x, *args, float(scale), **_LAUNCH)


def update_(
    p: torch.Tensor,
    seed: int,
    offset: int,
    rule: str,
    c: dict[str, float],
    state: tuple[torch.Tensor, ...],
) -> None:
    """One update of p (rule sgd, momentum or adam; host scalars `c` from api._update_consts)."""
    n = p.numel()
    if not n:
        return
    grid, args = _stream_args(n, seed, offset)
    has_wd = c["wd"] != 0.0
    if rule == "sgd":
        _sgd_kernel[grid](p, *args, c["lr"], c["g"], c["wd"], HAS_WD=has_wd, **_LAUNCH)
    elif rule == "momentum":
        _momentum_kernel[grid](
            p, state[0], *args, c["lr"], c["g"], c["wd"], c["beta"], HAS_WD=has_wd, **_LAUNCH
        )
    else:
        _adam_kernel[grid](
            p,
            state[0],
            state[1],
            *args,
            c["g"],
            c["wd"],
            c["b1"],
            c["c1"],
            c["b2"],
            c["c2"],
            c["inv_bc2"],
            c["step_size"],
            c["eps"],
            HAS_WD=has_wd,
            **_LAUNCH,
        )
