"""forward-grad: forward-mode AD along a random tangent. Memory model and runnable step.

One step (Baydin et al., "Gradients without Backpropagation", arXiv 2202.08587; ZO-Bench's
`forward_grad_step`): sample a tangent v ~ N(0, I), one tensor per trainable parameter; run the
loss under `torch.func.jvp` to get f(x) and the directional derivative ∇f(x)·v in one forward;
update x ← x − lr·((∇f·v)·v + wd·x). First-order information without back-propagation: nothing
is saved for a backward pass, but every activation that depends on the parameters carries a
tangent of its own size (a dual tensor), and each op's forward-AD formula
(tools/autograd/derivatives.yaml, `result:` entries) allocates temporaries of its own.

Memory of a step = weights + the tangent (P, kept from sampling to the update) + the dual
activations of the forward's live set + the formula temporaries of the op running at the peak.
The estimator replays it on `DualTape`; docs/forward-grad.md gives the rule per op family.

Choices (docs/forward-grad.md):
- the tangent is stored as each parameter's `.grad`: it is the size-P buffer that, scaled by the
  scalar ∇f·v, is the gradient estimate, and it lives from sampling to the update as FO
  gradients live from backward to the optimizer step; trackers and estimator count it as
  `gradients`;
- the forward runs in eval() mode (no dropout), as memplan's other ZO methods do; ZO-Bench's
  training loop calls `forward_grad_step` directly (not HF's `training_step`) and never calls
  `model.train()`, so its model stays in the eval mode `from_pretrained` leaves it in;
- SDPA runs the math kernel (`sdpa_kernel(SDPBackend.MATH)`; forward AD has no formula for the
  fused flash / memory-efficient kernels) and the output says so (`attention_kernel`: "math");
  eager attention runs as is ("eager");
- in half precision `F.layer_norm` runs in fp32 and casts back (`LayerNormFP32`): torch's own
  formula would give a bf16 output an fp32 tangent on CUDA and meta (see there);
- the update is in place (`mul_`, `add_`): no temporaries. ZO-Bench writes
  `p.data.sub_(lr * (v * jvp + wd * p.data))`, which allocates up to three temporaries the size
  of the tensor being updated, and it takes the whole model output from the jvp, so the logits
  and their tangent stay alive through its update; memplan keeps only the loss.

Known limitations: q = 1 (one tangent per step); frozen parameters get no tangent (the estimator
follows `requires_grad`, the runnable passes only trainable parameters to the jvp); no AMP and
no activation checkpointing (refused: nothing is saved for a backward pass); on the meta
backend, ops without a fused meta kernel run Python decompositions whose intermediates the
tracker counts (e.g. `silu_backward`), which shows only where such an op sets the peak.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from memplan.errors import MemplanError
from memplan.methods.base import Candidate, MethodSpec, register
from memplan.methods.replay import StepBuilder
from memplan.methods.zo import ZOSettings
from memplan.programs import F32, PROGRAMS, Kernels
from memplan.runtime.context import RunContext
from memplan.tape import Tape, Tensor

# ---- memory model: the tape in forward-AD mode (no torch) ---------------------------------------
#
# Under `torch.func.jvp` every tensor that depends on a parameter is a dual tensor: its primal
# and a tangent of the same size and dtype, created by the op's forward-AD formula right after
# the primal and freed with it. A formula may allocate temporaries before it produces the
# tangent; `FORMULA_TEMPS` gives, per program op, the bytes of those temporaries still alive when
# the tangent is allocated (the formula's peak minus the tangent), in units of the output's
# bytes. Sources: the `result:` (forward-AD) entries of tools/autograd/derivatives.yaml and the
# zero-tensor kernels of ATen (an undefined tangent enters a formula as an efficient zero
# tensor; `mul`/`mm` by one gives another, `add` of one to a real tensor returns a copy of the
# real one: BinaryOps.cpp `add_zerotensor`), each confirmed against the allocation timeline of
# the measured step (docs/forward-grad.md).


def _products(tangents: Sequence[bool], bias: bool = False) -> float:
    """A sum of products, one per input with a tangent (`mm`, `mul`, `addmm`: `self_t * other_p
    + self_p * other_t` [+ `bias_t`]): each product and each partial sum is a new tensor, all
    alive until the sum is done; an undefined tangent's product is a zero tensor, and adding it
    copies the other term. Measured: mm 3 allocations (2 temporaries + the tangent), addmm 4,
    mul with one tangent 2 (the product and its copy)."""
    terms = sum(tangents)
    allocs = terms + max(terms + bias - 1, 0) + (1 if terms < len(tangents) else 0)
    return max(allocs - 1, 0)


def _linear_temps(tangents: Sequence[bool]) -> float:
    return _products(tangents[:2], bias=len(tangents) > 2 and tangents[2])


# temporaries (in output sizes) alive beside the tangent at the formula's peak
FORMULA_TEMPS: dict[str, Callable[[Sequence[bool]], float]] = {
    # tangent = the same linear op on the input tangents: no temporary
    **dict.fromkeys(
        (
            "embedding",  # embedding(weight_t, ids)
            "to_copy",  # _to_copy(self_t)
            "add",  # self_t + other_t (or a copy of the defined one)
            "add_eps",  # variance + eps: a copy of self_t
            "mean",
            "neg",
            "cat",
            "slice",
            "contiguous",  # clone(self_t)
            "repeat_kv",  # expand + clone
            "sdpa_scale",  # ATen's `query_acc * scaling_factor` (mul.Scalar): self_t * s
            "silu",  # silu_backward(self_t, self_p): one kernel
            "gelu",  # gelu_backward(self_t, self_p)
            "relu",  # threshold_backward(self_t, result, 0)
            "dropout",
            "nll_loss",
        ),
        lambda t: 0.0,
    ),
    "linear": _linear_temps,  # mm: x_t W^T + x W_t^T; addmm adds bias_t
    "matmul": _products,  # bmm, as mm
    "mul": _products,
    # `x * python_float` is mul.Tensor with a wrapped-number operand that has no tangent: the
    # product x_t * s, then the zero-tensor add copies it
    "mul_scalar": lambda t: 1.0,
    # pow_backward: self_p.pow(1) (a copy), * exponent, * self_t
    "pow": lambda t: 2.0,
    # -0.5 * self_t * result.pow(3): pow, * -0.5, * self_t
    "rsqrt": lambda t: 2.0,
    # result * (self_t - logsumexp_jvp(self_p, self_t)): logsumexp_jvp keeps exp(self_p - amax)
    # and its product with self_t (two outputs' worth) beside the primal, then
    # self_t - lse_t and the tangent; the row vectors (amax, sums) are left out (1/row size)
    "softmax": lambda t: 1.0,
    "log_softmax": lambda t: 1.0,
    # layer_norm_jvp: input_t - mean(input_t), input_p - mean_p, their product, invstd_t, the
    # normalized tangent and its affine terms: four outputs' worth beside the tangent (measured)
    "layer_norm": lambda t: 4.0,
}


@dataclass
class DualTape(Tape):
    """The tape under forward-mode AD: no graph, nothing saved, and every op output that
    depends on a tensor with a tangent gets its own tangent (the op's `FORMULA_TEMPS`
    temporaries come and go first).

    A tensor has a tangent if it is a trainable parameter (`requires_grad`) or was produced by
    an op with such an input: exactly the tensors that would require grad in the backward
    tape. The outputs themselves keep `requires_grad=False`, so the programs record nothing
    for a backward pass.

    Known limitations: ops missing from `FORMULA_TEMPS` get a tangent and no temporary; row
    vectors inside softmax and layer-norm formulas (1/row of an output) are left out.
    """

    dual = True
    # id(primal) -> (primal, its tangent); holding the primal keeps its id unique
    tangents: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def has_tangent(self, t: Tensor) -> bool:
        while t.base is not None:
            t = t.base
        return t.requires_grad or id(t) in self.tangents

    def op(
        self,
        name: str,
        inputs: Sequence[Tensor],
        outs_spec: Sequence[tuple[int, int]],
        saved: Sequence[Tensor] = (),
        grad_bytes: Sequence[int] | None = None,
        bwd_temp: int = 0,
        fwd_temp: int = 0,
        out_grad: Sequence[bool] | None = None,
    ) -> list[Tensor]:
        self.transient(fwd_temp)
        has = [self.has_tangent(t) for t in inputs]
        outs = [self.alloc(n, e, name=name) for n, e in outs_spec]
        if any(has):
            temps = FORMULA_TEMPS.get(name, lambda t: 0.0)(has)
            for i, o in enumerate(outs):
                if out_grad is not None and not out_grad[i]:
                    continue
                self.tangents[id(o)] = (o, self.alloc(o.numel, o.elem, name=name + "_t"))
                self.transient(int(temps * o.nbytes))
        return outs

    def _release(self, t: Tensor) -> None:
        super()._release(t)
        entry = self.tangents.pop(id(t), None)
        if entry is not None:
            entry[1].drop()

    def checkpoint(self, fn, inputs):  # noqa: ANN001
        return fn()  # nothing is saved, so there is nothing to recompute


HALF = ("bf16", "fp16")


def attention_kernel_for(attn: str) -> str:
    """The attention kernel forward-grad runs: SDPA's math path, or eager attention."""
    return "eager" if attn == "eager" else "math"


def check_workload(wl) -> None:  # noqa: ANN001
    """Settings forward-grad does not run with (user errors, raised before any work)."""
    if wl.checkpointing:
        raise MemplanError(
            "forward-grad saves nothing for a backward pass, so activation checkpointing has "
            "nothing to save; drop --checkpointing"
        )
    if wl.dtype == "amp":
        raise MemplanError("forward-grad runs in pure fp32, bf16 or fp16; drop --dtype amp")


def _layer_norm_fp32(self, x: Tensor, name: str, h: int) -> Tensor:
    """Program.layer_norm as forward-grad runs it in half precision (see `LayerNormFP32`):
    `F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)`; the fp32 copies
    are temporaries of the call."""
    tp = self.tp
    x32 = self.to(x, F32)
    w32, b32 = (
        tp.op1("to_copy", [self.P[f"{name}.{k}"]], self.P[f"{name}.{k}"].numel, F32)
        for k in ("weight", "bias")
    )
    rows = x32.numel // h
    y32, mean, rstd = tp.op(
        "layer_norm",
        [x32, w32, b32],
        [(x32.numel, F32), (rows, F32), (rows, F32)],
        out_grad=[True, False, False],
    )
    for t in (mean, rstd):
        t.drop()
    y = self.to(y32, x.elem)
    for t in (y32, w32, b32, x32):
        t.drop()
    return y


def program_class(family: str, half: bool) -> type:
    """The family's forward program, with LayerNorm in fp32 when the model is half precision."""
    cls = PROGRAMS[family]
    if not half:
        return cls
    return type("FP32LayerNorm" + cls.__name__, (cls,), {"layer_norm": _layer_norm_fp32})


def estimate_step(b: StepBuilder) -> None:
    """The estimate: weights; the tangents sampled one tensor at a
    time while the earlier ones stay (phase "perturbation", category gradients); the forward
    under the dual tape in eval() mode with the attention kernel forward AD supports; the
    in-place update (no temporaries) that frees each tangent."""
    check_workload(b.wl)
    b.tape = DualTape(round_to=b.round_to)
    prog = b.setup(program=program_class(b.cfg.family, b.wl.dtype in HALF), training=False)
    prog.kern = Kernels(attention_kernel_for(b.wl.attn), prog.kern.dropout_mask_elem)
    b.info["attention_kernel"] = prog.kern.attention
    tape = b.tape
    tape.set_phase("perturbation")
    tangents = [
        tape.alloc(p.numel, b.elem, name="tangent_" + p.name, cat="gradients")
        for p in b.specs
        if b.params[p.name].requires_grad
    ]
    tape.set_phase("forward")
    prog.forward().drop()
    tape.set_phase("optimizer")
    for t in tangents:
        t.drop()


# ---- runnable step (torch imported lazily) ------------------------------------------------------
def _layer_norm_mode():
    """A TorchFunctionMode that runs `F.layer_norm` of a half-precision input in fp32 and casts
    the result back, as CUDA autocast does. Why: torch's forward-AD formula for
    `native_layer_norm` (FunctionsManual.cpp `layer_norm_jvp`) mixes the input with the saved
    mean and rstd, which are fp32 for a half input on CUDA (and in the meta kernel; the CPU
    kernel keeps the input dtype), so the output's tangent comes out fp32 beside a bf16
    primal, and the next matmul rejects the mixed dtypes (measured on meta: `bmm` raises
    "expected scalar type BFloat16 but found Float")."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class LayerNormFP32(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func is F.layer_norm and args[0].dtype in (torch.bfloat16, torch.float16):
                names = ("normalized_shape", "weight", "bias", "eps")
                kw = {**dict(zip(names, args[1:])), **kwargs}
                w, bias = kw.get("weight"), kw.get("bias")
                out = F.layer_norm(
                    args[0].float(),
                    kw["normalized_shape"],
                    None if w is None else w.float(),
                    None if bias is None else bias.float(),
                    kw.get("eps", 1e-5),
                )
                return out.to(args[0].dtype)
            return func(*args, **kwargs)

    return LayerNormFP32()


def _decays(name: str) -> bool:
    """ZO-Bench applies weight decay to every parameter but biases and layer norms."""
    return not any(k in name for k in ("bias", "layer_norm", "layernorm"))


class ForwardGrad:
    """Forward-gradient optimizer over a model's trainable parameters.

    `step(model, batch, phase, autocast, math_sdpa)` runs one step and returns the loss.
    `state` is empty (nothing is kept across steps); the tangent lives in `p.grad` during the
    step. Knobs come from `ZOSettings`: lr, weight_decay, seed.
    """

    def __init__(self, named_params, zs: ZOSettings) -> None:
        self.params = [(n, p) for n, p in named_params if p.requires_grad]
        self.zs = zs
        self.state: dict = {}
        self.n_steps = 0
        self.last_jvp: float | None = None

    def _generator(self, device):
        import torch

        if device.type == "meta":  # meta tensors have no values: no RNG to seed
            return None
        g = torch.Generator(device=device)
        g.manual_seed(self.zs.seed * 1_000_003 + self.n_steps * 7919)
        return g

    def sample(self) -> None:
        """One tangent tensor per parameter, in parameter order, stored as `.grad`."""
        import torch

        gen = self._generator(self.params[0][1].device) if self.params else None
        for _, p in self.params:
            p.grad = torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=gen)

    def step(
        self,
        model,
        batch: dict,
        phase: Callable[[str], None],
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        math_sdpa: bool = True,
    ) -> float:
        import torch
        from torch.func import functional_call, jvp
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self.n_steps += 1
        phase("perturbation")
        self.sample()
        names = [n for n, _ in self.params]
        primals = tuple(p.detach() for _, p in self.params)
        tangents = tuple(p.grad for _, p in self.params)

        def loss_of(*ps):
            return functional_call(model, dict(zip(names, ps)), args=(), kwargs=batch).loss

        phase("forward")
        kernel = sdpa_kernel([SDPBackend.MATH]) if math_sdpa else nullcontext()
        half = self.params and self.params[0][1].dtype in (torch.bfloat16, torch.float16)
        ln = _layer_norm_mode() if half else nullcontext()
        with torch.no_grad(), kernel, autocast(), ln:
            loss, d = jvp(loss_of, primals, tangents)
        del primals, tangents
        value, g = float(loss), float(d)
        del loss, d
        self.last_jvp = g
        phase("optimizer")
        lr, wd = self.zs.lr, self.zs.weight_decay
        with torch.no_grad():
            for n, p in self.params:
                if wd and _decays(n):
                    p.mul_(1 - lr * wd)
                p.add_(p.grad, alpha=-lr * g)
                p.grad = None
        phase("end")
        return value


def forward_grad_step(step, phase: Callable[[str], None]) -> float:
    """The runnable step (memplan.runtime.step.Step.run): eval() mode, then one ForwardGrad
    step; SDPA is held to the math kernel unless the model runs eager attention."""
    step.model.eval()
    opt = step.optimizers[0]
    math_sdpa = step.info.get("attention_kernel") == "math"
    return opt.step(step.model, step.batch, phase, step.autocast, math_sdpa)


def build_step(ctx: RunContext):
    """The runnable step (a `RunContext` in, a Step out)."""
    check_workload(ctx.wl)
    model = ctx.model()
    opt = ForwardGrad(model.named_parameters(), ctx.options["zo"])
    step = ctx.step(model, [opt], forward_grad_step, training=False)
    step.info["attention_kernel"] = attention_kernel_for(ctx.wl.attn)
    return step


SPEC = register(
    MethodSpec(
        "forward-grad",
        "zo",
        "forward-mode AD (jvp) along a stored random tangent (P): weights + tangent + duals",
        estimate_step,
        build_step,
        aliases=("fwd-grad",),
        settings=("zo",),
        candidates=(
            Candidate(
                "forward-grad",
                "zeroth-order",
                "forward-mode AD: exact directional derivative, a tangent per weight",
                7,
            ),
        ),
    )
)
