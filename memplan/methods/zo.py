"""Zeroth-order methods: their memory model and their runnable step, side by side.

The common step (MeZO, q = 1): draw a seed; perturb every trainable parameter in place by
+eps*z, forward -> loss+; by -2eps*z, forward -> loss-; by +eps*z to restore; the projected
gradient g = (loss+ - loss-) / (2 eps); regenerate z from the same seed for the update. z is a
pure function of (seed, element offset) (memplan_kernels), so it is never stored.

| method       | state kept across steps        | forwards per step | update                  |
|--------------|--------------------------------|-------------------|-------------------------|
| zo-sgd       | none                           | 2                 | p -= lr (g z + wd p)    |
| zo-sgd-sign  | none                           | 2                 | p -= lr (sign(g) z + wd p) |
| zo-sgd-mmt   | momentum m (P, param dtype)    | 2                 | m = b m + g z; p -= lr m |
| zo-sgd-cons  | none                           | 5                 | best of x, x -/+ lr g z |
| zo-adam      | m, v (2P, param dtype)         | 2                 | Adam on g z             |
| zo-block     | none                           | 2 per block       | per block, as zo-sgd    |
| zo-sparse    | a bool mask per parameter (P B)| 2                 | as zo-sgd on the mask   |

Memory of a step = weights + state + the no-grad forward's largest live set + the perturbation
implementation's temporaries (memplan_kernels.memory: fused 0, chunked O(chunk), reference one
tensor of the perturbed tensor's size). Queries q > 1 remember the q seeds and projected
gradients and average q regenerated noises into a buffer of one tensor at a time before its
update (ZO-Bench accumulates q estimates into `param.grad`, a P-sized buffer; regenerating
from the seeds gives the same update without it).

Known limitations: zo-sparse keeps its masks (ZO-Bench's code
rebuilds a dense normal tensor and a mask per step, which saves no memory as written).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from math import prod

import memplan_kernels
from memplan.errors import MemplanError
from memplan.knobs import Knob
from memplan.methods.base import (
    Candidate,
    MethodSpec,
    SettingsGroup,
    register,
    register_settings,
)
from memplan.methods.replay import StepBuilder, ZOMemory, replay_zo_step
from memplan.runtime.context import RunContext
from memplan_kernels.memory import temporary_bytes

ZO_METHODS = (
    "zo-sgd",
    "zo-sgd-sign",
    "zo-sgd-mmt",
    "zo-sgd-cons",
    "zo-adam",
    "zo-block",
    "zo-sparse",
)
RULE = {
    "zo-sgd": "sgd",
    "zo-sgd-sign": "sign",
    "zo-sgd-mmt": "momentum",
    "zo-sgd-cons": "sgd",
    "zo-adam": "adam",
    "zo-block": "sgd",
    "zo-sparse": "sgd",
}
IMPLS = ("auto", "fused", "chunked", "reference")
DEFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZOSettings:
    """Knobs of the ZO methods (defaults from MeZO's OPT-13B runs and ZO-Bench)."""

    lr: float = 1e-6
    eps: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    q: int = 1
    sparsity: float = 0.8  # zo-sparse: fraction of each tensor left unperturbed
    impl: str = "auto"  # fused where Triton runs (CUDA), else chunked
    chunk_elems: int = DEFAULT_CHUNK
    seed: int = 0

    def __post_init__(self) -> None:
        if self.q < 1:
            raise MemplanError(f"--q must be at least 1, got {self.q}")
        if not 0.0 <= self.sparsity < 1.0:
            raise MemplanError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if self.impl not in IMPLS:
            raise MemplanError(f"--impl must be one of {', '.join(IMPLS)}; got '{self.impl}'")
        if self.eps <= 0:
            raise MemplanError(f"--eps must be positive, got {self.eps}")
        if self.chunk_elems < 1:
            raise MemplanError(f"--chunk must be positive, got {self.chunk_elems}")


ZO_SETTINGS = register_settings(
    SettingsGroup(
        "zo",
        ZOSettings,
        (
            Knob(
                "impl",
                str,
                ZOSettings.impl,
                "ZO perturbation: auto (fused on CUDA with Triton, else chunked) | fused "
                "(Triton) | chunked | reference",
            ),
            Knob("q", int, ZOSettings.q, "ZO queries averaged per step"),
            Knob("sparsity", float, ZOSettings.sparsity, "zo-sparse: fraction left unperturbed"),
            Knob(
                "chunk",
                int,
                ZOSettings.chunk_elems,
                "chunked ZO perturbation: elements per chunk",
                field="chunk_elems",
            ),
        ),
    )
)


# ---- memory model (no torch) --------------------------------------------------------------------
def resolve_impl(impl: str, device: str) -> str:
    """`auto` is the fused Triton kernel on CUDA when Triton is installed (CUDA builds of torch
    ship it) and the chunked PyTorch fallback otherwise; the estimate and the run resolve it
    the same way (Triton's presence is looked up, not imported)."""
    if impl != "auto":
        return impl
    from importlib.util import find_spec

    return "fused" if device == "cuda" and find_spec("triton") is not None else "chunked"


def zo_memory(
    method: str, shapes: Sequence[tuple[int, ...]], elem: int, zs: ZOSettings
) -> ZOMemory:
    """Memory terms of `method` over trainable tensors of `shapes` (`zs.impl` resolved)."""
    numels = [prod(s) for s in shapes]
    total = sum(numels)
    largest = max(numels, default=0)
    state = {"momentum": total * elem, "adam": 2 * total * elem}.get(RULE[method], 0)
    if method == "zo-sparse":
        state += total  # one bool per element
    temp = temporary_bytes(largest, elem, zs.impl, zs.chunk_elems, op="perturb")
    upd = temporary_bytes(largest, elem, zs.impl, zs.chunk_elems, op=RULE[method])
    if method == "zo-sparse":  # noise(n) in the tensor's dtype, masked, added: chunk by chunk
        n = largest if zs.impl == "reference" else min(largest, zs.chunk_elems)
        temp = upd = n * elem + temporary_bytes(n, elem, zs.impl, zs.chunk_elems, op="noise")
    # q > 1: one tensor's averaged estimate at a time, accumulated in fp32
    grad_buf = largest * 4 if zs.q > 1 else 0
    if zs.q > 1:  # the regenerated noises are added into the buffer
        upd = temporary_bytes(largest, 4, zs.impl, zs.chunk_elems, op="perturb")
    return ZOMemory(state, temp, upd, grad_buf)


def for_device(zs: ZOSettings, device: str, run: bool = False) -> ZOSettings:
    """`zs` with its perturbation impl resolved for `device` (the estimate and the run resolve
    it the same way). `run`: the settings a real step uses: the fused Triton kernel needs a
    CUDA tensor (or Triton's interpreter) and is refused on meta tensors, which have no data."""
    impl = resolve_impl(zs.impl, device)
    if run and impl == "fused":
        if device == "meta":
            raise MemplanError(
                "the fused perturbation kernel needs real tensors; use --impl chunked or "
                "reference with --device meta"
            )
        if not memplan_kernels.triton_available(device):
            raise MemplanError(
                f"--impl fused needs Triton for {device} tensors (pip install triton; on CPU "
                "set TRITON_INTERPRET=1 before starting); or use --impl chunked"
            )
    return replace(zs, impl=impl)


# ---- runnable step ------------------------------------------------------------------------------
class ZOOptimizer:
    """A zeroth-order optimizer over named parameters; `step(loss_fn, phase)` runs one step.

    `loss_fn()` runs a no-grad forward and returns the loss as a float. `state` maps each
    parameter to its tensors (momentum, Adam moments, sparse masks), so memory trackers see
    them as optimizer state.
    """

    def __init__(
        self, named_params, method: str, zs: ZOSettings, blocks: Callable[[str], str] | None = None
    ) -> None:
        if method not in ZO_METHODS:
            raise MemplanError(f"'{method}' is not a zeroth-order method: {', '.join(ZO_METHODS)}")
        self.method = method
        self.rule = RULE[method]
        self.params = [(n, p) for n, p in named_params if p.requires_grad]
        device = self.params[0][1].device.type if self.params else "cpu"
        self.zs = replace(zs, impl=resolve_impl(zs.impl, device))
        self.offsets = []
        off = 0
        for _, p in self.params:
            self.offsets.append(off)
            off += p.numel()
        self.state: dict = {}
        self.blocks = blocks
        self.n_steps = 0

    # noise is indexed by (seed, offset of the parameter in the flat vector + element)
    def _perturb(self, idx: Sequence[int], seed: int, scale: float) -> None:
        for i in idx:
            _, p = self.params[i]
            mask = self.state.get(p, {}).get("mask")
            if mask is None:
                memplan_kernels.perturb_(
                    p.data,
                    seed,
                    scale,
                    offset=self.offsets[i],
                    impl=self.zs.impl,
                    chunk_elems=self.zs.chunk_elems,
                )
            else:
                self._masked(p.data, mask, seed, self.offsets[i], scale)

    def _masked(self, t, mask, seed: int, offset: int, scale: float) -> None:
        """t += scale * z * mask, chunk by chunk (z from the same counter stream)."""
        flat, m = t.view(-1), mask.view(-1)
        n = flat.numel()
        step = n if self.zs.impl == "reference" else self.zs.chunk_elems
        for start in range(0, n, step):
            stop = min(n, start + step)
            z = memplan_kernels.noise(
                stop - start,
                seed,
                offset + start,
                dtype=t.dtype,
                device=t.device,
                impl=self.zs.impl,
                chunk_elems=self.zs.chunk_elems,
            )
            z.mul_(m[start:stop])
            flat[start:stop].add_(z, alpha=scale)
            del z

    def _init_state(self) -> None:
        import torch

        for _, p in self.params:
            st = {}
            if self.rule == "momentum":
                st["momentum_buffer"] = torch.zeros_like(p)
            elif self.rule == "adam":
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            if self.method == "zo-sparse":
                st["mask"] = _magnitude_mask(p.detach(), self.zs.sparsity)
            if st:
                self.state[p] = st

    def _update(self, idx: Sequence[int], seed: int, g: float) -> None:
        zs = self.zs
        for i in idx:
            _, p = self.params[i]
            st = self.state.get(p, {})
            if "mask" in st:  # sparse: p -= lr * (g * z * mask + wd * p)
                if zs.weight_decay:
                    p.data.mul_(1 - zs.lr * zs.weight_decay)
                self._masked(p.data, st["mask"], seed, self.offsets[i], -zs.lr * g)
                continue
            state = tuple(st[k] for k in ("momentum_buffer", "exp_avg", "exp_avg_sq") if k in st)
            memplan_kernels.zo_update_(
                p.data,
                seed,
                offset=self.offsets[i],
                rule=self.rule,
                lr=zs.lr,
                g=g,
                weight_decay=zs.weight_decay,
                state=state,
                betas=(zs.momentum, zs.betas[1]) if self.rule == "momentum" else zs.betas,
                step=self.n_steps,
                impl=zs.impl,
                chunk_elems=zs.chunk_elems,
            )

    def _groups(self) -> list[list[int]]:
        if self.method != "zo-block":
            return [list(range(len(self.params)))]
        groups: dict[str, list[int]] = {}
        key = self.blocks or _default_block
        for i, (n, _) in enumerate(self.params):
            groups.setdefault(key(n), []).append(i)
        return list(groups.values())

    def step(self, loss_fn: Callable[[], float], phase: Callable[[str], None]) -> float:
        if not self.state and (self.rule in ("momentum", "adam") or self.method == "zo-sparse"):
            self._init_state()
        self.n_steps += 1
        eps = self.zs.eps
        last = 0.0
        for group in self._groups():
            seeds, grads = [], []
            for _ in range(self.zs.q):
                seed = step_seed(self.zs.seed, self.n_steps, len(seeds), group[0])
                phase("perturbation")
                self._perturb(group, seed, eps)
                phase("forward")
                lp = loss_fn()
                phase("perturbation")
                self._perturb(group, seed, -2 * eps)
                phase("forward")
                lm = loss_fn()
                phase("perturbation")
                self._perturb(group, seed, eps)
                seeds.append(seed)
                grads.append((lp - lm) / (2 * eps))
                last = (lp + lm) / 2
            phase("optimizer")
            if self.zs.q == 1:
                if self.method == "zo-sgd-cons":
                    last = self._conservative(group, seeds[0], grads[0], last, loss_fn, phase)
                else:
                    self._update(group, seeds[0], grads[0])
            else:
                self._update_averaged(group, seeds, grads)
        phase("end")
        return last

    def _conservative(self, group, seed, g, base, loss_fn, phase) -> float:
        """Keep the best of x, x - lr g z, x + lr g z (ZO-Bench's ZO-SGD-Cons)."""
        lr = self.zs.lr
        phase("forward")
        l0 = loss_fn()
        phase("optimizer")
        self._perturb(group, seed, -lr * g)
        phase("forward")
        l1 = loss_fn()
        phase("optimizer")
        self._perturb(group, seed, 2 * lr * g)
        phase("forward")
        l2 = loss_fn()
        phase("optimizer")
        best = min((l0, 0.0), (l1, -lr * g), (l2, lr * g))
        self._perturb(group, seed, best[1] - lr * g)  # from x + lr g z to the best point
        return best[0]

    def _update_averaged(self, group, seeds, grads) -> None:
        """q > 1: the averaged estimate (1/q) sum g_i z_i (sign: sign(g_i) z_i), one tensor at a
        time: the q noises are regenerated from their seeds into an fp32 buffer of that tensor
        (masked for zo-sparse), which the update then uses as its only scratch."""
        import torch

        zs = self.zs
        q = len(seeds)
        for i in group:
            _, p = self.params[i]
            st = self.state.get(p, {})
            buf = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            for s, g in zip(seeds, grads):
                coef = (1.0 if g > 0 else -1.0 if g < 0 else 0.0) if self.rule == "sign" else g
                memplan_kernels.perturb_(
                    buf,
                    s,
                    coef / q,
                    offset=self.offsets[i],
                    impl=zs.impl,
                    chunk_elems=zs.chunk_elems,
                )
            if "mask" in st:
                buf.mul_(st["mask"])
            if zs.weight_decay:
                buf.add_(p.data, alpha=zs.weight_decay)
            if self.rule == "momentum":
                st["momentum_buffer"].mul_(zs.momentum).add_(buf)
                p.data.add_(st["momentum_buffer"], alpha=-zs.lr)
            elif self.rule == "adam":
                b1, b2 = zs.betas
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(buf, alpha=1 - b1)
                v.mul_(b2).addcmul_(buf, buf, value=1 - b2)
                torch.div(v, 1 - b2**self.n_steps, out=buf).sqrt_().add_(1e-8)  # denom, in place
                p.data.addcdiv_(m, buf, value=-zs.lr / (1 - b1**self.n_steps))
            else:  # sgd, sign
                p.data.add_(buf, alpha=-zs.lr)
            del buf


def step_seed(base: int, step: int, query: int, block: int) -> int:
    """A 63-bit seed for one (step, query, block): SplitMix64's output function folded over the
    four integers, so nearby tuples never share a seed by arithmetic coincidence (a linear
    formula like base*a + step*b + ... does collide once blocks outnumber its strides)."""
    mask = (1 << 64) - 1
    z = 0
    for v in (base, step, query, block):
        z = (z + (v & mask) + 0x9E3779B97F4A7C15) & mask  # SplitMix64's golden-ratio gamma
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
    return z >> 1


def _default_block(name: str) -> str:
    """Blocks of zo-block: one per transformer layer, the embeddings, and the rest (head)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "layer") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    if "embed" in name:
        return "embeddings"
    return "head"


def _magnitude_mask(w, sparsity: float):
    """Perturb the (1 - sparsity) fraction of entries with the smallest magnitude (sparse
    MeZO's choice); computed per tensor once, at the first step."""
    import torch

    n = w.numel()
    keep = max(1, int(math.ceil(n * (1 - sparsity))))
    if w.is_meta:
        return torch.empty(w.shape, dtype=torch.bool, device=w.device)
    thresh = w.abs().float().view(-1).kthvalue(keep).values
    return w.abs() <= thresh


# ---- the registry entries -----------------------------------------------------------------------
def estimate_zo(b: StepBuilder) -> None:
    program = b.setup(training=False)  # MeZO's forwards: model.eval(), no dropout
    zs = for_device(b.options["zo"], b.wl.device)
    b.info["zo_impl"] = zs.impl
    replay_zo_step(b.tape, program, zo_memory(b.spec.name, b.trainable_shapes(), b.elem, zs))


def build_zo(ctx: RunContext):
    from memplan.runtime.step import run_zo_step

    zo = for_device(ctx.options["zo"], ctx.wl.device, run=True)
    model = ctx.model()
    opt = ZOOptimizer(model.named_parameters(), ctx.spec.name, zo)
    step = ctx.step(model, [opt], run_zo_step, training=False)
    step.info["zo_impl"] = zo.impl
    return step


_KNOBS = ("impl", "chunk")


def _zo(name: str, summary: str, order: int, note: str, **kw) -> MethodSpec:
    return MethodSpec(
        name,
        "zo",
        summary,
        estimate_zo,
        build_zo,
        settings=("zo",),
        knobs=kw.pop("knobs", _KNOBS + ("q",)),
        candidates=(Candidate(name, "zeroth-order", note, order),),
        model=RULE[name],
        **kw,
    )


for _spec in (
    _zo(
        "zo-sgd",
        "MeZO: two perturbed forwards, no state",
        2,
        "MeZO: inference memory, many more steps than FO",
        aliases=("mezo",),
    ),
    _zo(
        "zo-sgd-sign",
        "ZO-SGD stepping along sign(g) z",
        3,
        "ZO stepping along sign(g) z: inference memory",
    ),
    _zo(
        "zo-sgd-mmt",
        "ZO-SGD with a momentum buffer (P)",
        1,
        "ZO with momentum: one state per weight",
    ),
    _zo(
        "zo-sgd-cons",
        "conservative ZO-SGD: best of three points, 5 forwards",
        4,
        "conservative ZO: 5 forwards per step, inference memory",
    ),
    _zo(
        "zo-adam",
        "Adam moments (2P) fed with the ZO estimate",
        0,
        "ZO with Adam moments: steadier ZO, 2 states per weight",
    ),
    _zo(
        "zo-block",
        "block-wise ZO: one layer/embeddings/head at a time",
        5,
        "block-wise ZO: lower variance, 2 forwards per block",
    ),
    _zo(
        "zo-sparse",
        "ZO on a magnitude-masked subset (bool mask per weight)",
        6,
        "ZO on a magnitude mask: a bool per weight",
        knobs=(*_KNOBS, "q", "sparsity"),
    ),
):
    register(_spec)
