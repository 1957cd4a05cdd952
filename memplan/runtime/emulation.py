"""Function-level modes that make cpu and meta runs behave like the CUDA run they stand in for.

- `MetaFlashAttention`: on meta tensors torch's SDPA dispatcher has no fused kernel and falls back
  to the math path (which saves batch*heads*seq^2 probabilities). The CUDA run a user makes uses
  the flash kernel, which saves only output and logsumexp. On meta tensors this mode routes
  `F.scaled_dot_product_attention` to `aten._scaled_dot_product_flash_attention_for_cpu`, whose
  meta kernel allocates exactly what the flash kernel does (output in the query's layout plus an
  fp32 logsumexp), dropout included (CUDA's flash kernel supports dropout; it keeps an RNG seed,
  not a mask).
- `CudaAutocastEmulation`: `torch.autocast` has no meta backend, and CPU autocast casts a
  different op list than CUDA autocast. This mode applies CUDA autocast's casting policy
  (aten/src/ATen/autocast_mode.cpp: the lower-precision list and the fp32 list) at the
  torch-function level, including autocast's cache of casted leaf weights (kept until the
  autocast region ends, as `cache_enabled=True` does). The cuda backend uses real autocast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


class MetaFlashAttention(TorchFunctionMode):
    """Route SDPA on meta tensors to the flash kernel's meta implementation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        # a caller that holds SDPA to the math kernel (`sdpa_kernel(SDPBackend.MATH)`, as
        # forward-grad does: forward AD has no formula for the fused kernels) gets it
        if (
            func is F.scaled_dot_product_attention
            and args
            and args[0].is_meta
            and torch.backends.cuda.flash_sdp_enabled()
        ):
            q, k, v = args[:3]
            rest = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:]))
            rest.update(kwargs)
            out, _lse = _FLASH(
                q,
                k,
                v,
                rest.get("dropout_p", 0.0),
                rest.get("is_causal", False),
                attn_mask=rest.get("attn_mask"),
                scale=rest.get("scale"),
            )
            return out
        return func(*args, **kwargs)


# CUDA autocast lists (aten/src/ATen/autocast_mode.cpp), as seen from Python.
_LOWER = {
    F.linear,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    torch.addmm,
    torch.baddbmm,
    F.scaled_dot_product_attention,
}
_FP32 = {
    F.softmax,
    torch.softmax,
    torch.Tensor.softmax,
    F.log_softmax,
    torch.log_softmax,
    torch.Tensor.log_softmax,
    F.layer_norm,
    F.cross_entropy,
    F.nll_loss,
    torch.rsqrt,
    torch.Tensor.rsqrt,
    torch.pow,
    torch.Tensor.pow,
    torch.exp,
    torch.Tensor.exp,
    torch.log,
    torch.Tensor.log,
}


class CudaAutocastEmulation(TorchFunctionMode):
    """Cast inputs of CUDA autocast's lists; cache casts of leaf tensors that require grad."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, torch.Tensor] = {}

    def __exit__(self, *exc):  # noqa: ANN002
        self._cache.clear()
        return super().__exit__(*exc)

    def _cast(self, x: object, dtype: torch.dtype) -> object:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == dtype:
            return x
        if dtype == self.dtype and x.dtype != torch.float32:
            return x  # autocast lowers fp32 only
        if x.is_leaf and x.requires_grad and dtype == self.dtype:
            hit = self._cache.get(id(x))
            if hit is None:
                hit = self._cache[id(x)] = x.to(dtype)
            return hit
        return x.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _LOWER:
            target = self.dtype
        elif func in _FP32:
            target = torch.float32
        else:
            return func(*args, **kwargs)
        args = tuple(self._cast(a, target) for a in args)
        kwargs = {k: self._cast(v, target) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@contextmanager
def emulation_modes(wl, autocast: bool = True) -> Iterator[None]:
    """The modes a cpu/meta run of `wl` needs: meta-flash SDPA on meta and, if `autocast`,
    CUDA autocast emulation under AMP. Entered only when the context is entered."""
    with ExitStack() as stack:
        if wl.device == "meta":
            stack.enter_context(MetaFlashAttention())
        if autocast and wl.dtype == "amp" and wl.device != "cuda":
            stack.enter_context(CudaAutocastEmulation(torch.bfloat16))
        yield
