"""The public functions of memplan_kernels (re-exported lazily by the package).

Seeded, counter-based Gaussian noise for zeroth-order (MeZO-style) fine-tuning.

z is a pure function of (seed, element offset) (`memplan_kernels.rng`), so it is never stored:
the optimizer perturbs parameters in place by +eps z, -2 eps z, +eps z and regenerates z for the
update. Three implementations (`IMPLS`):

- fused: Triton kernels that regenerate z and perturb / update in one pass, allocating nothing
  (CUDA; or CPU tensors under TRITON_INTERPRET=1, for tests).
- chunked: plain PyTorch, the same stream (same integer uniforms; z equal up to fp32 ulps of
  log/cos/sin), `chunk_elems` elements at a time in one fixed workspace.
- reference: MeZO's per-tensor torch.normal in the parameter's dtype (a different RNG).

Transient memory of each: `memplan_kernels.memory.temporary_bytes` (torch-free). The design,
the RNG and the memory derivations are in docs/kernels.md.

Known limitations: contiguous fp32/bf16/fp16 tensors only; the fused kernels are untuned and,
under the interpreter, slow (tests use a few thousand elements); `triton_available` reports
whether the kernels can run, not whether they are fast.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from types import ModuleType

import torch

from memplan_kernels import torch_impl
from memplan_kernels.memory import IMPLS

__all__ = ["IMPLS", "RULES", "noise", "perturb_", "triton_available", "zo_update_"]

RULES = ("sgd", "sign", "momentum", "adam")
_STATE_LEN = {"sgd": 0, "sign": 0, "momentum": 1, "adam": 2}
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_INDEX = (1 << 63) - 1  # int64 element indices in both implementations
_KERNELS = "memplan_kernels.triton_kernels"


def _interpret_env() -> bool:
    """TRITON_INTERPRET as Triton reads it (knobs.env_bool: 1, true, on, yes; any case)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_available(device: torch.device | str) -> bool:
    """True if the fused impl can run on tensors on `device`.

    Triton fixes interpretation when a @triton.jit function is decorated, i.e. when
    memplan_kernels.triton_kernels is first imported (with TRITON_INTERPRET=1 set then, the
    kernels are interpreted), and the interpreter also needs the variable while it runs (it
    imports parts of triton lazily). So: triton importable, and for CPU tensors the kernels are
    (or, not yet imported, will be) interpreted and TRITON_INTERPRET=1 is set now; for CUDA
    tensors the kernels are compiled, or interpreted with the variable set (slow, copies).

    Known limitations: does not check the GPU's compute capability or that a CUDA device exists.
    """
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda") or importlib.util.find_spec("triton") is None:
        return False
    env = _interpret_env()
    mod = sys.modules.get(_KERNELS)
    interpreted = bool(mod.INTERPRETED) if mod is not None else env
    if dev.type == "cpu":
        return interpreted and env
    return not interpreted or env


def _fused(device: torch.device) -> ModuleType:
    """The triton_kernels module, or a RuntimeError saying why the fused impl cannot run."""
    if not triton_available(device):
        raise RuntimeError(
            f"impl='fused' cannot run on {device}: it needs triton and a CUDA device (or, on CPU, "
            "TRITON_INTERPRET=1 set before memplan_kernels.triton_kernels is first imported and "
            "while it runs); "
            "use impl='chunked' for the same numbers in plain PyTorch"
        )
    import memplan_kernels.triton_kernels as tk

    return tk


def _check_tensor(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() on a copy)")


def _check_common(n: int, offset: int, impl: str, chunk_elems: int) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if chunk_elems < 1:
        raise ValueError(f"chunk_elems must be >= 1, got {chunk_elems}")
    if offset < 0 or offset + n > _MAX_INDEX:
        raise ValueError(f"offset must be in [0, 2**63 - numel), got {offset}")


@torch.no_grad()
def perturb_(
    t: torch.Tensor,
    seed: int,
    scale: float,
    offset: int = 0,
    impl: str = "chunked",
    chunk_elems: int = 1 << 20,
) -> None:
    """t += scale * z[offset : offset + t.numel()] in place (fp32 compute, stored in t's dtype).

    Known limitations: t must be contiguous fp32/bf16/fp16; impl="reference" draws z from
    torch.Generator(seed, offset) per call, so it matches fused/chunked in distribution only.
    """
    _check_tensor(t, "t")
    _check_common(t.numel(), offset, impl, chunk_elems)
    if impl == "fused":
        _fused(t.device).perturb_(t, seed, scale, offset)
    elif impl == "chunked":
        torch_impl.chunked_perturb(t, seed, scale, offset, chunk_elems)
    else:
        torch_impl.reference_perturb(t, seed, scale, offset)


@torch.no_grad()
def noise(
    n: int,
    seed: int,
    offset: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    impl: str = "chunked",
    chunk_elems: int = 1 << 20,
) -> torch.Tensor:
    """z[offset : offset + n] as a new tensor (generated in fp32, then rounded to `dtype`).

    `impl` and `chunk_elems` (an extension of the original API; defaults keep it) pick how it is
    computed: fused and chunked give the same stream, reference gives MeZO's torch.normal draw for
    a tensor of n elements at `offset` (generated directly in `dtype`).

    Known limitations: the chunked impl allocates its workspace (memory.temporary_bytes(...,
    op="noise")) on top of the returned tensor.
    """
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_common(n, offset, impl, chunk_elems)
    device = torch.device(device)
    if impl == "reference":
        return torch_impl.reference_normal((n,), seed, offset, dtype, device)
    out = torch.empty(n, dtype=dtype, device=device)
    if impl == "fused":
        _fused(device).noise_(out, seed, offset)
    else:
        torch_impl.chunked_noise(out, seed, offset, chunk_elems)
    return out


def _sign(g: float) -> float:
    """torch.sign's convention: -1, 0 or 1, and NaN for NaN."""
    if math.isnan(g):
        return math.nan
    return 0.0 if g == 0 else math.copysign(1.0, g)


def _update_consts(
    rule: str,
    lr: float,
    g: float,
    weight_decay: float,
    betas: tuple[float, float],
    step: int,
    eps_adam: float,
) -> dict[str, float]:
    """The host scalars both implementations use (each rounded to fp32 where it is applied)."""
    if rule == "sign":
        g = _sign(g)
    c = {"lr": float(lr), "g": float(g), "wd": float(weight_decay)}
    if rule == "momentum":
        c["beta"] = float(betas[0])
    elif rule == "adam":
        b1, b2 = float(betas[0]), float(betas[1])
        c.update(
            b1=b1,
            c1=1.0 - b1,
            b2=b2,
            c2=1.0 - b2,
            inv_bc2=1.0 / (1.0 - b2**step),
            step_size=lr / (1.0 - b1**step),
            eps=float(eps_adam),
        )
    return c


@torch.no_grad()
def zo_update_(
    p: torch.Tensor,
    seed: int,
    offset: int,
    rule: str,
    lr: float,
    g: float,
    weight_decay: float,
    state: tuple[torch.Tensor, ...],
    betas: tuple[float, float],
    step: int,
    impl: str,
    chunk_elems: int,
    eps_adam: float = 1e-8,
) -> None:
    """One ZO update of p in place, z regenerated from (seed, offset); g is the projected gradient.

    gz = g z + wd p (sign: sign(g) z + wd p), all in fp32, stored in each tensor's dtype:

    - sgd, sign: p -= lr gz
    - momentum: state (m,); m = beta m + gz; p -= lr m (beta = betas[0]; the fp32 m, before
      rounding to m's dtype, updates p)
    - adam: state (m, v); m = b1 m + (1-b1) gz; v = b2 v + (1-b2) gz^2;
      p -= lr/(1-b1^step) * m / (sqrt(v/(1-b2^step)) + eps_adam), step >= 1

    Known limitations: state tensors must be contiguous, float, with p's numel and device (they
    may have another float dtype than p); weight decay is coupled (L2 in gz, not AdamW's).
    """
    _check_tensor(p, "p")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    state = tuple(state)
    if len(state) != _STATE_LEN[rule]:
        raise ValueError(f"rule {rule!r} takes {_STATE_LEN[rule]} state tensors, got {len(state)}")
    for i, s in enumerate(state):
        _check_tensor(s, f"state[{i}]")
        if s.numel() != p.numel() or s.device != p.device:
            raise ValueError(f"state[{i}] must match p's numel and device")
    if rule == "adam" and step < 1:
        raise ValueError(f"adam needs step >= 1 (bias correction), got {step}")
    _check_common(p.numel(), offset, impl, chunk_elems)
    consts = _update_consts(rule, lr, g, weight_decay, betas, step, eps_adam)
    kernel_rule = "sgd" if rule == "sign" else rule
    if impl == "fused":
        _fused(p.device).update_(p, seed, offset, kernel_rule, consts, state)
    elif impl == "chunked":
        torch_impl.chunked_update(p, seed, offset, kernel_rule, consts, state, chunk_elems)
    else:
        torch_impl.reference_update(p, seed, offset, kernel_rule, consts, state)
