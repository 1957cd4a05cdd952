"""Transient memory of the perturbation and update implementations (no torch, no triton).

memplan's analytic estimator imports this module, so it must stay instant: it imports neither
torch nor triton (tests/test_kernels.py checks that in a fresh interpreter).

The numbers are the peak live bytes beyond the tensor itself (and, for updates, its optimizer
state; for `noise`, the returned tensor) while ONE call runs on ONE tensor:

- fused: 0. The Triton kernels read and write the tensor in place and allocate nothing.
- chunked: one int64 workspace of WORKSPACE_ROWS rows x (n // 2 + 1) counters, where
  n = min(numel, chunk_elems), for every op and every dtype (see `chunk_workspace_bytes`).
- reference: the whole noise tensor z in the tensor's dtype, numel * elem, for perturb and every
  update rule (the update reuses z as its only scratch); 0 for `noise` (its z is the output).

Each formula is checked to the byte against memplan's StorageTracker in tests/test_kernels.py
(`test_temporary_bytes_match_tracker`); docs/kernels.md has the derivations.

Known limitations: the chunked workspace is sized for a chunk even when the caller's tensor is
a view into a larger one; allocator rounding (the CUDA caching allocator's 512-byte blocks) and
scalars that PyTorch wraps into 0-dim tensors inside its kernels (8 bytes, invisible to a
dispatch-mode tracker) are not counted.
"""

from __future__ import annotations

IMPLS = ("fused", "chunked", "reference")
OPS = ("perturb", "noise", "sgd", "sign", "momentum", "adam")

# The chunked workspace (torch_impl._Workspace): 4 int64 rows, each holding one value per pair
# counter of the chunk: the two Feistel halves, the round-function output and a scratch row for
# the xorshift and 16-bit-split multiplies. After hashing, the same rows are reinterpreted as
# fp32 (2 floats per int64) for Box-Muller, the interleaved noise, and the fp32 copies of the
# parameter and its state, so nothing else is allocated.
WORKSPACE_ROWS = 4
WORKSPACE_ITEMSIZE = 8  # int64


def chunk_counters(n: int) -> int:
    """Pair counters a run of n consecutive elements can touch: n // 2 + 1 (the +1 covers an odd
    start, e.g. elements 1..2 need pairs 0 and 1). The workspace is always sized this way, so its
    size does not depend on the offset's parity."""
    return n // 2 + 1


def chunk_workspace_bytes(numel: int, chunk_elems: int) -> int:
    """Bytes of the chunked impl's single workspace allocation for a tensor of `numel`."""
    if numel == 0:
        return 0
    return WORKSPACE_ROWS * WORKSPACE_ITEMSIZE * chunk_counters(min(numel, chunk_elems))


def temporary_bytes(numel: int, elem: int, impl: str, chunk_elems: int, op: str = "perturb") -> int:
    """Peak transient bytes while perturbing or updating one tensor of `numel` elements.

    `elem` is the tensor's element size in bytes (4 fp32, 2 bf16/fp16). `op` is "perturb", "noise"
    (beyond the returned tensor) or an update rule ("sgd", "sign", "momentum", "adam"; beyond the
    parameter and its optimizer state).

    Known limitations: see the module docstring (no allocator rounding, no hidden 0-dim scalars);
    the fused impl is 0 on a GPU, while under TRITON_INTERPRET=1 on CPU the interpreter's own
    numpy temporaries (a few block-sized arrays) are not counted.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if elem < 1:
        raise ValueError(f"elem must be >= 1 byte, got {elem}")
    if chunk_elems < 1:
        raise ValueError(f"chunk_elems must be >= 1, got {chunk_elems}")
    if numel == 0 or impl == "fused":
        return 0
    if impl == "chunked":
        return chunk_workspace_bytes(numel, chunk_elems)
    return 0 if op == "noise" else numel * elem
