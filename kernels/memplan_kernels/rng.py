"""The counter-based Gaussian stream, on the host: constants, key schedule, a pure-Python model.

z is a pure function of (seed, absolute element index j), never stored:

1. Keys. The seed (any Python int, taken mod 2**64) is expanded into four 32-bit round keys by
   two SplitMix64 draws (`round_keys`).
2. Counter. Elements come in pairs: j = 2c and j = 2c + 1 share the 64-bit pair counter c = j >> 1.
3. Hash. c is split into (hi, lo) 32-bit words and run through a 4-round balanced Feistel network
   whose round function is `lowbias32(x ^ key)`. A Feistel network is a bijection of the 64-bit
   counter for every key, so two different counters never give the same pair (h1, h2).
4. Box-Muller. u1 = ((h1 >> 8) + 1) * 2**-24 in (0, 1], theta = (h2 >> 8) * (2 pi 2**-24);
   r = sqrt(-2 ln u1); z[2c] = r cos(theta), z[2c + 1] = r sin(theta).

Every step up to the two 24-bit integers is exact integer arithmetic, done identically by the
Triton kernels (uint32), the PyTorch path (int64 with masks) and `hash_pair` below (Python ints).
The float steps are single IEEE fp32 operations in the same order in both implementations; only
log, cos and sin come from different libraries (Triton backend vs PyTorch's SLEEF on CPU), so z
agrees to a few fp32 ulps, not bit for bit.

This module imports neither torch nor triton: memplan's estimator and the kernels share it.

Known limitations: seeds are reduced mod 2**64; |z| is bounded by sqrt(-2 ln 2**-24) = 5.77
(P(|N(0,1)| > 5.77) = 8e-9, so the tail beyond it is missing); u1 and theta carry 24 bits each, so
z takes at most 2**48 distinct values; the generator is not cryptographic.
"""

from __future__ import annotations

import math

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

# lowbias32: Chris Wellons, "Prospecting for Hash Functions" (2018),
# https://nullprogram.com/blog/2018/07/31/ : x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
# x *= 0x846ca68b; x ^= x >> 16 (bias 0.17 by the author's avalanche measure). A bijection of
# uint32 (each xorshift and each odd multiplier is invertible).
LOWBIAS_MUL1 = 0x7FEB352D
LOWBIAS_MUL2 = 0x846CA68B
LOWBIAS_SHIFT1 = 16
LOWBIAS_SHIFT2 = 15
LOWBIAS_SHIFT3 = 16

# Feistel rounds: Luby and Rackoff (SIAM J. Comput. 1988) show that 4 rounds of a pseudo-random
# round function give a strong pseudo-random permutation; the statistical checks in
# tests/test_kernels.py and the avalanche numbers in docs/kernels.md were measured with 4.
FEISTEL_ROUNDS = 4

# SplitMix64 (Steele, Lea, Flood, OOPSLA 2014; constants as in Vigna's splitmix64.c,
# https://prng.di.unimi.it/splitmix64.c): the golden-ratio increment and the two multipliers
# of its output function (Stafford's "Mix13").
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MUL1 = 0xBF58476D1CE4E5B9
SPLITMIX_MUL2 = 0x94D049BB133111EB

# The 24 high bits of each hash word become the uniforms: 24 bits is an fp32 significand, so
# the integer -> fp32 conversion and the scaling by a power of two are exact everywhere.
UNIFORM_SHIFT = 8
U24 = 2.0**-24  # exact in fp32
TWO_PI_U24 = 2.0 * math.pi * 2.0**-24  # rounded once to fp32 by both implementations

# Domain tag that separates the reference impl's torch.Generator seeds from the round keys
# (any fixed odd 64-bit constant works; this one is the first 16 hex digits of sqrt(2)).
REFERENCE_DOMAIN = 0x6A09E667F3BCC908


def _mix64(z: int) -> int:
    """SplitMix64's output function (a bijection of uint64)."""
    z = ((z ^ (z >> 30)) * SPLITMIX_MUL1) & MASK64
    z = ((z ^ (z >> 27)) * SPLITMIX_MUL2) & MASK64
    return z ^ (z >> 31)


def round_keys(seed: int) -> tuple[int, int, int, int]:
    """The four 32-bit Feistel round keys of `seed` (two SplitMix64 draws from state seed)."""
    state = seed & MASK64
    out: list[int] = []
    for _ in range(FEISTEL_ROUNDS // 2):
        state = (state + SPLITMIX_GAMMA) & MASK64
        z = _mix64(state)
        out += [z & MASK32, z >> 32]
    return out[0], out[1], out[2], out[3]


def as_int32(k: int) -> int:
    """A uint32 as the int32 with the same bits (so Triton types the kernel argument i32)."""
    return k - (1 << 32) if k >= 1 << 31 else k


def lowbias32(x: int) -> int:
    x ^= x >> LOWBIAS_SHIFT1
    x = (x * LOWBIAS_MUL1) & MASK32
    x ^= x >> LOWBIAS_SHIFT2
    x = (x * LOWBIAS_MUL2) & MASK32
    return x ^ (x >> LOWBIAS_SHIFT3)


def hash_pair(keys: tuple[int, int, int, int], counter: int) -> tuple[int, int]:
    """(h1, h2) of one 64-bit pair counter: the exact integer model of both implementations."""
    hi, lo = (counter >> 32) & MASK32, counter & MASK32
    hi ^= lowbias32(lo ^ keys[0])
    lo ^= lowbias32(hi ^ keys[1])
    hi ^= lowbias32(lo ^ keys[2])
    lo ^= lowbias32(hi ^ keys[3])
    return hi, lo


def normal_pair(seed: int, counter: int) -> tuple[float, float]:
    """(z[2c], z[2c+1]) in float64 arithmetic: a model for tests, not bit-equal to fp32."""
    h1, h2 = hash_pair(round_keys(seed), counter)
    u1 = ((h1 >> UNIFORM_SHIFT) + 1) * U24
    theta = (h2 >> UNIFORM_SHIFT) * TWO_PI_U24
    r = math.sqrt(-2.0 * math.log(u1))
    return r * math.cos(theta), r * math.sin(theta)


def reference_seed(seed: int, offset: int) -> int:
    """The torch.Generator seed of the reference impl for the tensor at `offset` (uint64)."""
    return _mix64((_mix64((seed ^ REFERENCE_DOMAIN) & MASK64) + offset) & MASK64)
