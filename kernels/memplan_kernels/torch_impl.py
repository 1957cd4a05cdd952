"""The `chunked` and `reference` implementations, in plain PyTorch.

chunked: the counter-based stream of `memplan_kernels.rng`, computed `chunk_elems` elements at a
time in ONE preallocated int64 workspace (memory.WORKSPACE_ROWS rows x n // 2 + 1 counters).
Every op writes into that workspace (`out=` or in place), so the transient memory is exactly the
workspace, whatever the dtype or the rule. uint32 arithmetic is emulated in int64: values stay in
[0, 2**32), xor/shift are exact, and a 32x32-bit multiply mod 2**32 is split into 16-bit halves of
the constant so no product exceeds 2**48 (no signed int64 overflow). The float part follows the
fused kernels op for op (each line one IEEE fp32 operation), so both give the same z up to the
ulps of log/cos/sin.

reference: MeZO's per-tensor `torch.normal(..., dtype=p.dtype, generator=g)`, then in-place
updates that reuse z as their only scratch. Its numbers come from PyTorch's generator, not from
the counter-based stream.

Known limitations: the chunked path launches ~110 small ops per chunk (slow on a GPU, where the
fused kernels are the fast path); it assumes contiguous tensors.
"""

from __future__ import annotations

import torch

from memplan_kernels import rng
from memplan_kernels.memory import WORKSPACE_ROWS, chunk_counters

_LOW16 = 0xFFFF


class _Workspace:
    """One int64 allocation, viewed as 4 rows (a, b, t, s) of m counters and as fp32 rows."""

    def __init__(self, n_max: int, device: torch.device) -> None:
        self.m = chunk_counters(n_max)
        buf = torch.empty(WORKSPACE_ROWS * self.m, dtype=torch.int64, device=device)
        self.a, self.b, self.t, self.s = buf.view(WORKSPACE_ROWS, self.m).unbind(0)
        self.af, self.bf, self.tf, self.sf = (
            r.view(torch.float32) for r in (self.a, self.b, self.t, self.s)
        )


def _mul32_(x: torch.Tensor, c: int, s: torch.Tensor) -> None:
    """x = x * c mod 2**32 for 0 <= x < 2**32: with c = ch 2**16 + cl, x*c = x*cl + (x*ch) 2**16,
    and mod 2**32 only the low 16 bits of x*ch matter; x*cl, x*ch < 2**48, no overflow."""
    torch.mul(x, c >> 16, out=s)
    s.bitwise_and_(_LOW16)
    s.bitwise_left_shift_(16)
    x.mul_(c & _LOW16)
    x.add_(s)
    x.bitwise_and_(rng.MASK32)


def _xorshift_(x: torch.Tensor, k: int, s: torch.Tensor) -> None:
    torch.bitwise_right_shift(x, k, out=s)
    x.bitwise_xor_(s)


def _lowbias32_(x: torch.Tensor, s: torch.Tensor) -> None:
    _xorshift_(x, rng.LOWBIAS_SHIFT1, s)
    _mul32_(x, rng.LOWBIAS_MUL1, s)
    _xorshift_(x, rng.LOWBIAS_SHIFT2, s)
    _mul32_(x, rng.LOWBIAS_MUL2, s)
    _xorshift_(x, rng.LOWBIAS_SHIFT3, s)


def hash_pairs(ws: _Workspace, c0: int, mc: int, keys: tuple[int, ...]) -> None:
    """ws.a[:mc], ws.b[:mc] = (h1, h2) of pair counters c0 .. c0 + mc - 1 (rng.hash_pair)."""
    a, b, t, s = ws.a[:mc], ws.b[:mc], ws.t[:mc], ws.s[:mc]
    torch.arange(c0, c0 + mc, out=a)
    torch.bitwise_and(a, rng.MASK32, out=b)  # lo
    a.bitwise_right_shift_(32)  # hi
    x, y = a, b
    for k in keys:  # hi ^= F(lo ^ k0); lo ^= F(hi ^ k1); hi ^= F(lo ^ k2); lo ^= F(hi ^ k3)
        torch.bitwise_xor(y, k, out=t)
        _lowbias32_(t, s)
        x.bitwise_xor_(t)
        x, y = y, x


def fill_noise(ws: _Workspace, start: int, n: int, keys: tuple[int, ...]) -> torch.Tensor:
    """z[start : start + n] in fp32, as a view of ws.sf; rows a, b, t are free afterwards."""
    c0 = start >> 1
    mc = ((start + n - 1) >> 1) - c0 + 1
    hash_pairs(ws, c0, mc, keys)
    a, b = ws.a[:mc], ws.b[:mc]
    r, theta = ws.tf[:mc], ws.tf[ws.m : ws.m + mc]
    a.bitwise_right_shift_(rng.UNIFORM_SHIFT)
    a.add_(1)
    r.copy_(a)  # exact: < 2**25
    r.mul_(rng.U24)  # u1 in (0, 1]
    r.log_()
    r.mul_(-2.0)
    r.sqrt_()
    b.bitwise_right_shift_(rng.UNIFORM_SHIFT)
    theta.copy_(b)
    theta.mul_(rng.TWO_PI_U24)
    cos, sin = ws.af[:mc], ws.af[ws.m : ws.m + mc]
    torch.cos(theta, out=cos)
    cos.mul_(r)
    torch.sin(theta, out=sin)
    sin.mul_(r)
    pairs = ws.sf[: 2 * mc].view(mc, 2)
    pairs[:, 0].copy_(cos)
    pairs[:, 1].copy_(sin)
    d = start & 1
    return ws.sf[d : d + n]


def _chunks(numel: int, chunk_elems: int):
    for lo in range(0, numel, chunk_elems):
        yield lo, min(numel, lo + chunk_elems)


def _as_fp32(x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """x itself if fp32 (updated in place), else its fp32 copy in `slot` (write back later)."""
    if x.dtype == torch.float32:
        return x
    slot.copy_(x)
    return slot


def _store(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.data_ptr() != src.data_ptr():
        dst.copy_(src)  # fp32 -> bf16/fp16: round to nearest even


def chunked_noise(out: torch.Tensor, seed: int, offset: int, chunk_elems: int) -> None:
    n = out.numel()
    if n == 0:
        return
    keys = rng.round_keys(seed)
    ws = _Workspace(min(n, chunk_elems), out.device)
    for lo, hi in _chunks(n, chunk_elems):
        out[lo:hi].copy_(fill_noise(ws, offset + lo, hi - lo, keys))


def chunked_perturb(t: torch.Tensor, seed: int, scale: float, offset: int, chunk: int) -> None:
    flat = t.view(-1)
    n = flat.numel()
    if n == 0:
        return
    keys = rng.round_keys(seed)
    ws = _Workspace(min(n, chunk), t.device)
    for lo, hi in _chunks(n, chunk):
        z = fill_noise(ws, offset + lo, hi - lo, keys)
        z.mul_(scale)
        x = _as_fp32(flat[lo:hi], ws.af[: hi - lo])
        x.add_(z)  # x + scale*z, as the fused kernel
        _store(flat[lo:hi], x)


def chunked_update(
    p: torch.Tensor,
    seed: int,
    offset: int,
    rule: str,
    consts: dict[str, float],
    state: tuple[torch.Tensor, ...],
    chunk: int,
) -> None:
    """One ZO update; `consts` are the host scalars the fused kernels get (see __init__)."""
    flat = p.view(-1)
    n = flat.numel()
    if n == 0:
        return
    keys = rng.round_keys(seed)
    ws = _Workspace(min(n, chunk), p.device)
    sflat = [s.view(-1) for s in state]
    wd = consts["wd"]
    for lo, hi in _chunks(n, chunk):
        k = hi - lo
        gz = fill_noise(ws, offset + lo, k, keys)  # in row s
        x = _as_fp32(flat[lo:hi], ws.af[:k])  # row a
        gz.mul_(consts["g"])
        if wd != 0.0:
            w = torch.mul(x, wd, out=ws.tf[:k])
            gz.add_(w)  # g z + wd p
        if rule == "sgd":
            gz.mul_(consts["lr"])
            x.sub_(gz)
        elif rule == "momentum":
            m = _as_fp32(sflat[0][lo:hi], ws.bf[:k])
            m.mul_(consts["beta"])
            m.add_(gz)  # beta m + gz
            _store(sflat[0][lo:hi], m)
            torch.mul(m, consts["lr"], out=gz)
            x.sub_(gz)
        else:  # adam
            m = _as_fp32(sflat[0][lo:hi], ws.bf[:k])
            m.mul_(consts["b1"])
            m.add_(torch.mul(gz, consts["c1"], out=ws.tf[:k]))  # b1 m + (1-b1) gz
            _store(sflat[0][lo:hi], m)
            v = _as_fp32(sflat[1][lo:hi], ws.tf[:k])
            v.mul_(consts["b2"])
            gz.mul_(gz)
            gz.mul_(consts["c2"])
            v.add_(gz)  # b2 v + (1-b2) gz^2
            _store(sflat[1][lo:hi], v)
            d = torch.mul(v, consts["inv_bc2"], out=gz)
            d.sqrt_()
            d.add_(consts["eps"])  # sqrt(v / bc2) + eps
            torch.div(m, d, out=d)  # not in m: for fp32 state m is the state itself
            d.mul_(consts["step_size"])  # lr / bc1 * m / d
            x.sub_(d)
        _store(flat[lo:hi], x)


# ---- reference -----------------------------------------------------------------------------------
def reference_normal(
    shape: torch.Size | tuple[int, ...],
    seed: int,
    offset: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """MeZO's draw: torch.normal in the tensor's dtype from a generator seeded by (seed, offset)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(rng.reference_seed(seed, offset))
    return torch.normal(0.0, 1.0, size=tuple(shape), generator=gen, dtype=dtype, device=device)


def reference_perturb(t: torch.Tensor, seed: int, scale: float, offset: int) -> None:
    if t.numel() == 0:
        return
    z = reference_normal(t.shape, seed, offset, t.dtype, t.device)
    t.add_(z, alpha=scale)
    del z


def reference_update(
    p: torch.Tensor,
    seed: int,
    offset: int,
    rule: str,
    consts: dict[str, float],
    state: tuple[torch.Tensor, ...],
) -> None:
    if p.numel() == 0:
        return
    z = reference_normal(p.shape, seed, offset, p.dtype, p.device)
    z.mul_(consts["g"])
    if consts["wd"] != 0.0:
        z.add_(p, alpha=consts["wd"])
    if rule == "sgd":
        p.add_(z, alpha=-consts["lr"])
    elif rule == "momentum":
        (m,) = state
        m.mul_(consts["beta"]).add_(z)
        p.add_(m, alpha=-consts["lr"])
    else:  # adam
        m, v = state
        m.mul_(consts["b1"]).add_(z, alpha=consts["c1"])
        v.mul_(consts["b2"]).addcmul_(z, z, value=consts["c2"])
        torch.mul(v, consts["inv_bc2"], out=z)  # z is free: reuse it for the denominator
        z.sqrt_().add_(consts["eps"])
        p.addcdiv_(m, z, value=-consts["step_size"])
    del z
