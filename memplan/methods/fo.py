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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import ceil, prod
from typing import Any

from memplan.errors import MemplanError
from memplan.methods.base import Candidate, MethodSpec, get_method, register
from memplan.methods.replay import OptimizerMemory, StepBuilder, replay_fo_step
from memplan.runtime.context import RunContext

STEP_BYTES = 4  # torch keeps `state["step"]` as a float32 scalar tensor per parameter
BNB_BLOCK = 256  # bitsandbytes block-wise quantization block for 8-bit optimizer states
BNB_MIN_8BIT = 4096  # bitsandbytes `min_8bit_size`: smaller tensors keep 32-bit states
BNB_QMAP_BYTES = 2 * 256 * 4  # two fp32 quantization maps (signed, unsigned), 256 entries
F32 = 4
IMPL_FLAGS = {"foreach": {"foreach": True}, "forloop": {"foreach": False}, "fused": {"fused": True}}
NO_FUSED_ON_META = (
    "torch's fused optimizers have no meta kernels; use --optimizer-impl foreach or forloop "
    "with --device meta, or run fused on --device cpu or cuda"
)


@dataclass(frozen=True)
class FirstOrder:
    """A first-order optimizer as memplan models and runs it (`MethodSpec.model` of kind fo):
    `memory(shapes, elem, impl)` -> its state and step temporaries over trainable tensors of
    `shapes`; `make(params, impl)` -> the torch (or bitsandbytes) optimizer; `impls`: the
    implementations it has (`--optimizer-impl`), none for a library with its own kernels."""

    memory: Callable[[Sequence[tuple[int, ...]], int, str], OptimizerMemory]
    make: Callable[[Any, str], Any]
    impls: tuple[str, ...] = ("foreach", "forloop", "fused")


def bnb_state_bytes(n: int) -> int:
    """bitsandbytes Optimizer2State.init_state for a tensor of n values: 2 uint8 states + 2
    fp32 absmax per block of 256 (`blocksize = 256`, bitsandbytes/optim/optimizer.py); tensors
    under min_8bit_size keep 2 fp32 states."""
    if n < BNB_MIN_8BIT:
        return 2 * n * F32
    return 2 * (n + ceil(n / BNB_BLOCK) * F32)


def _impl(method: str, model: FirstOrder, impl: str) -> str:
    if impl not in model.impls:
        raise MemplanError(
            f"{method} has no {impl} implementation; use --optimizer-impl "
            + " or ".join(model.impls)
        )
    return impl


def fo_memory(
    method: str, shapes: Sequence[tuple[int, ...]], elem: int, impl: str
) -> OptimizerMemory:
    """State and step temporaries of first-order `method` over trainable tensors of `shapes`."""
    spec = get_method(method)
    if spec.kind != "fo":
        raise MemplanError(f"no first-order memory model for method '{method}'")
    return spec.model.memory(shapes, elem, impl)


def make_optimizer(method: str, params, impl: str, device: str | None = None):
    """The torch (or bitsandbytes) optimizer that first-order `method` names, with the chosen
    impl; fused is refused on meta tensors (no meta kernels)."""
    spec = get_method(method)
    if spec.kind != "fo":
        raise MemplanError(f"'{method}' is not a first-order optimizer")
    if impl == "fused" and device == "meta":
        raise MemplanError(NO_FUSED_ON_META)
    return spec.model.make(params, impl)


# ---- the optimizers' memory (see the table above) -----------------------------------------------
def _sgd_memory(shapes, elem, impl) -> OptimizerMemory:
    return OptimizerMemory(0, 0)


def _momentum_memory(shapes, elem, impl) -> OptimizerMemory:
    return OptimizerMemory(sum(prod(s) for s in shapes) * elem, 0)


def _adam_memory(shapes, elem, impl) -> OptimizerMemory:
    numels = [prod(s) for s in shapes]
    total = sum(numels)
    state = 2 * total * elem + STEP_BYTES * len(numels)
    temp = {"foreach": total, "forloop": _adam_forloop_peak(numels), "fused": 0}[impl]
    return OptimizerMemory(state, temp * elem)


def _adafactor_memory(shapes, elem, impl) -> OptimizerMemory:
    state = STEP_BYTES * len(shapes)
    mats, vecs = 0, 0
    for s in shapes:
        n = prod(s)
        if len(s) >= 2:
            state += (prod(s[:-1]) + prod(s[:-2]) * s[-1]) * elem
            mats += n
        else:
            state += n * elem
            vecs += n
    _impl("adafactor", ADAFACTOR, impl)
    temp = max(mats, vecs) if impl == "foreach" else _adafactor_forloop_peak(shapes)
    return OptimizerMemory(state, temp * elem)


def _adam8bit_memory(shapes, elem, impl) -> OptimizerMemory:
    return OptimizerMemory(BNB_QMAP_BYTES + sum(bnb_state_bytes(prod(s)) for s in shapes), 0)


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


# ---- the optimizers (torch imported when one is built) ------------------------------------------
LR = 1e-3  # values do not change memory; lr and weight decay as the step would use them


def _torch_optim(cls_name: str, **kw: Any) -> Callable[[Any, str], Any]:
    def make(params, impl: str):
        import torch

        return getattr(torch.optim, cls_name)(params, **kw, **IMPL_FLAGS[impl])

    return make


def _make_adafactor(params, impl: str):
    import torch

    _impl("adafactor", ADAFACTOR, impl)
    return torch.optim.Adafactor(params, lr=LR * 10, **IMPL_FLAGS[impl])


def _make_adam8bit(params, impl: str):
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise MemplanError(
            "adam8bit needs bitsandbytes and a CUDA GPU (pip install bitsandbytes)"
        ) from e
    return bnb.optim.AdamW8bit(params, lr=LR, weight_decay=0.0)


ADAFACTOR = FirstOrder(_adafactor_memory, _make_adafactor, ("foreach", "forloop"))


# ---- the registry entries -----------------------------------------------------------------------
def estimate_fo(b: StepBuilder) -> None:
    """Every parameter trained by the method's optimizer: forward, backward, step."""
    program = b.setup()
    om = fo_memory(b.spec.name, b.trainable_shapes(), b.elem, b.wl.optimizer_impl)
    replay_fo_step(b.tape, program, om)


def build_fo(ctx: RunContext):
    model = ctx.model()
    params = [p for p in model.parameters() if p.requires_grad]
    wl = ctx.wl
    return ctx.step(model, [make_optimizer(ctx.spec.name, params, wl.optimizer_impl, wl.device)])


def first_order(
    name: str,
    summary: str,
    model: FirstOrder,
    aliases: tuple[str, ...] = (),
    candidate: tuple[int, str] | None = None,
    **kw: Any,
) -> MethodSpec:
    """A first-order method's registry entry; `candidate` = (order, trade-off note): ranked by
    the planner in the full first-order tier, with and without checkpointing."""
    cands = ()
    if candidate is not None:
        order, note = candidate
        cands = (Candidate(name, "full first-order", note, order, checkpointing_variants=True),)
    return MethodSpec(
        name,
        "fo",
        summary,
        estimate_fo,
        build_fo,
        aliases=aliases,
        knobs=("optimizer_impl",) if model.impls else (),
        candidates=cands,
        model=model,
        **kw,
    )


for _spec in (
    first_order(
        "fo-sgd",
        "torch SGD, no state",
        FirstOrder(_sgd_memory, _torch_optim("SGD", lr=LR, weight_decay=0.0)),
        ("sgd",),
        (4, "plain SGD: no state, the leanest back-propagation"),
    ),
    first_order(
        "fo-sgd-mmt",
        "SGD with momentum: one buffer per parameter",
        FirstOrder(_momentum_memory, _torch_optim("SGD", lr=LR, momentum=0.9, weight_decay=0.0)),
        ("sgd-mmt", "momentum"),
        (3, "SGD + momentum: one state per weight, slower to converge than Adam"),
    ),
    first_order(
        "fo-adam",
        "torch Adam: exp_avg + exp_avg_sq per parameter",
        FirstOrder(_adam_memory, _torch_optim("Adam", lr=LR, weight_decay=0.0)),
        ("adam",),
    ),
    first_order(
        "adamw",
        "torch AdamW (decoupled weight decay): 2 states per parameter",
        FirstOrder(_adam_memory, _torch_optim("AdamW", lr=LR, weight_decay=0.01)),
        ("fo-adamw",),
        (0, "full fine-tuning, AdamW: the quality baseline; 2 states per weight"),
    ),
    first_order(
        "adam8bit",
        "bitsandbytes 8-bit AdamW: 1-byte states + fp32 block scales",
        FirstOrder(_adam8bit_memory, _make_adam8bit, ()),
        ("adamw8bit",),
        (1, "AdamW with 8-bit states (bitsandbytes, CUDA): near-AdamW quality"),
        devices=("cuda",),
        device_hint="adam8bit runs bitsandbytes CUDA kernels: use --device cuda",
    ),
    first_order(
        "adafactor",
        "torch Adafactor: factored second moment (row + column)",
        ADAFACTOR,
        (),
        (2, "factored second moment: far less state, needs its own lr tuning"),
    ),
):
    register(_spec)
