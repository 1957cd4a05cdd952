"""GaLore (gradient low-rank projection): its memory model and its runnable step, side by side.

Methods: `galore` (galore_torch.GaLoreAdamW), `galore8bit` (GaLoreAdamW8bit, bitsandbytes
8-bit states), `galore-adafactor` (GaLoreAdafactor); `layerwise=True` steps one optimizer per
parameter from a post-accumulate-grad hook inside backward, as GaLore's torchrun_main.py does.

Projected parameters: the 2-D weights of the attention and MLP linear layers
(`ParamSpec.is_matrix_2d_linear`: llama q/k/v/o/gate/up/down_proj, opt q/k/v/out_proj and
fc1/fc2, roberta query/key/value, attention.output.dense, intermediate.dense, output.dense);
everything else (embeddings, norms, head, biases) sits in a plain group, as in torchrun_main.py
(`regular_params` first, then the group with "rank").

The memory model replays, per parameter and in the optimizer's own for-loop order, what each
line of galore_torch allocates (galore_torch 1.0: adamw.py, adafactor.py, adamw8bit.py,
galore_projector.py), with Python's binding semantics: a loop variable keeps the previous
parameter's tensor alive until the same line rebinds it. Two kinds of step:
- ordinary: project the gradient, update low-rank moments, project the update back;
- refresh (step % update_proj_gap == 0): first an fp32 SVD of the full gradient
  (`torch.linalg.svd(grad.float(), full_matrices=False)`) and a new projector.
The estimate runs both and reports the worse (Breakdown.info["galore_step"]); docs/galore.md
derives every term. This part of the module imports no torch; `build_step` imports it lazily.

Known limitations: the SVD's internal LAPACK/cuSOLVER workspace is not modeled (the cpu and
meta backends see only its outputs U, S, Vh); proj_type "full" (two projectors) is refused;
galore8bit runs bitsandbytes CUDA kernels (and `torch.cuda.synchronize()` in its step), so it is
estimated here but measured only on --device cuda.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from math import prod
from typing import TYPE_CHECKING, Any

from memplan.errors import MemplanError
from memplan.knobs import Knob
from memplan.methods.base import (
    Candidate,
    MethodSpec,
    SettingsGroup,
    register,
    register_settings,
)
from memplan.methods.fo import BNB_MIN_8BIT, BNB_QMAP_BYTES, bnb_state_bytes
from memplan.methods.replay import StepBuilder, everything
from memplan.models import ModelConfig, ParamSpec, layout
from memplan.runtime.context import RunContext
from memplan.tape import Tape, Tensor

if TYPE_CHECKING:  # no torch at import: a hint only
    from memplan.runtime.step import Step

F32 = 4
PROJ_TYPES = ("std", "reverse_std", "right", "left")
STEP_KINDS = ("ordinary", "refresh", "both")
# GaLore paper (arXiv 2403.03507) Table 2 / its scripts: rank per LLaMA size, T = 200 except 7B
PRESET_RANK = {
    "galore-llama-60m": (128, 200),
    "galore-llama-130m": (256, 200),
    "galore-llama-350m": (256, 200),
    "galore-llama-1b": (512, 200),
    "galore-llama-7b": (1024, 500),
}
# GaLoreAdamW8bit.__init__ passes (..., min_8bit_size, percentile_clipping, block_wise) by
# position; bitsandbytes 0.50's Optimizer2State takes (..., min_8bit_size, max_unorm,
# skip_zeros) there, so max_unorm = 100 > 0 and init_state adds `unorm_vec` (1 fp32) per
# parameter (optimizer.py: `if config["max_unorm"] > 0.0`). Per-layer mode's plain parameters
# use bnb.optim.Adam8bit (max_unorm 0): no unorm_vec.
BNB_UNORM_BYTES = 4
DEFAULT_RANK = 128  # other models; capped at the smallest projected dimension (tiny configs)


@dataclass(frozen=True)
class GaLoreSettings:
    """GaLore's knobs. `rank` None: the preset's rank from the paper (PRESET_RANK), else 128
    (or the smallest projected dimension when that is smaller). `update_proj_gap` None: 200
    (500 for galore-llama-7b). `step_kind`: which step the estimate reports (both: the worse)
    and which one a measurement runs (ordinary or refresh; the warm-up step always refreshes,
    since every projector starts empty)."""

    rank: int | None = None
    update_proj_gap: int | None = None
    scale: float = 0.25
    proj_type: str = "std"
    layerwise: bool = False
    step_kind: str = "both"
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise MemplanError(f"--rank must be a positive integer, got {self.rank}")
        gap = self.update_proj_gap
        if gap is not None and (not isinstance(gap, int) or gap < 1):
            raise MemplanError(f"--update-proj-gap must be a positive integer, got {gap}")
        if not self.scale > 0:
            raise MemplanError(f"--scale must be positive, got {self.scale}")
        if self.proj_type not in PROJ_TYPES:
            hint = " ('full' keeps two projectors and is not modeled)" * (self.proj_type == "full")
            raise MemplanError(
                f"--proj-type must be one of {', '.join(PROJ_TYPES)}; got '{self.proj_type}'" + hint
            )
        if self.step_kind not in STEP_KINDS:
            raise MemplanError(
                f"--galore-step must be one of {', '.join(STEP_KINDS)}; got '{self.step_kind}'"
            )

    def measured(self, est_info: dict) -> GaLoreSettings:
        """The settings to measure with: "both" becomes the kind the estimate says peaks."""
        if self.step_kind != "both":
            return self
        return replace(self, step_kind=est_info.get("galore_step", "refresh"))

    @property
    def effective_gap(self) -> int:
        """The projector's gap as galore-torch's script sets it: doubled in per-layer mode
        (torchrun_main.py, `update_proj_gap * 2` for galore_adamw8bit_per_layer, a workaround
        for its scheduler stepping twice; the projector itself counts optimizer steps)."""
        return (self.update_proj_gap or 200) * (2 if self.layerwise else 1)


def projected(cfg: ModelConfig) -> list[ParamSpec]:
    return [p for p in layout(cfg).params if p.is_matrix_2d_linear]


def resolve(settings: GaLoreSettings | None, cfg: ModelConfig) -> GaLoreSettings:
    """Fill in the preset defaults and check the rank against every projected weight."""
    s = settings or GaLoreSettings()
    mats = projected(cfg)
    if not mats:
        raise MemplanError(f"{cfg.name} has no attention/MLP linear weights for GaLore to project")
    smallest = min(mats, key=lambda p: min(p.shape))
    limit = min(smallest.shape)
    rank, gap = PRESET_RANK.get(cfg.name, (min(DEFAULT_RANK, limit), 200))
    if s.rank is not None:
        rank = s.rank
        if rank > limit:
            m, n = smallest.shape
            raise MemplanError(
                f"--rank {rank} exceeds the smaller dimension of {smallest.name} ({m}x{n}); "
                f"use --rank {limit} or less"
            )
    s = replace(s, rank=rank, update_proj_gap=s.update_proj_gap or gap)
    if s.step_kind == "ordinary" and s.effective_gap == 1:
        raise MemplanError(
            "--update-proj-gap 1 refreshes the projector at every step: use --galore-step refresh"
        )
    return s


def side(shape: tuple[int, ...], proj_type: str) -> str:
    """Which SVD factor the projector keeps (galore_projector.py, `project`): 'right' keeps
    Vh[:r] (r x n) and projects G @ P.T (m x r); 'left' keeps U[:, :r] (m x r), P.T @ G."""
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def low_shape(shape: tuple[int, ...], rank: int, proj_type: str) -> tuple[int, int]:
    m, n = shape
    return (m, rank) if side(shape, proj_type) == "right" else (rank, n)


def projector_bytes(shape: tuple[int, ...], rank: int, proj_type: str, grad_elem: int) -> int:
    """Bytes the projector keeps. `get_orthogonal_matrix` casts its fp32 slice back to a
    non-fp32 gradient's dtype (`.type(original_type)`: a compact r x n or m x r copy); for an
    fp32 gradient it returns the slice itself, a view that keeps the whole SVD factor alive
    (Vh: k x n, or U: m x k, k = min(m, n), fp32)."""
    m, n = shape
    k = min(m, n)
    right = side(shape, proj_type) == "right"
    if grad_elem != F32:
        return (rank * n if right else m * rank) * grad_elem
    return (k * n if right else m * k) * F32


@dataclass(frozen=True)
class Item:
    """One parameter as the optimizer sees it."""

    spec: ParamSpec
    projected: bool

    @property
    def numel(self) -> int:
        return self.spec.numel


def optimizer_order(
    cfg: ModelConfig, s: GaLoreSettings, trainable: Callable[[str], bool] | None = None
) -> list[Item]:
    """Parameters in the optimizer's order: torchrun_main.py's param_groups put
    `regular_params` (model.parameters() minus the projected weights) first. `trainable`: only
    the parameters it accepts (the hybrid split's deep part), as `make_optimizers(keep=...)`."""
    params = [p for p in layout(cfg).params if trainable is None or trainable(p.name)]
    regular = [Item(p, False) for p in params if not p.is_matrix_2d_linear]
    return regular + [Item(p, True) for p in params if p.is_matrix_2d_linear]


def state_bytes(method: str, items: list[Item], s: GaLoreSettings, elem: int) -> int:
    """Optimizer state after the first step, by method (galore_torch 1.0)."""
    r, total, n8 = s.rank, 0, 0
    for it in items:
        shape = it.spec.shape
        n = prod(low_shape(shape, r, s.proj_type)) if it.projected else it.numel
        if method == "galore":  # adamw.py: exp_avg, exp_avg_sq zeros_like(grad); step: int
            total += 2 * n * elem
            if it.projected:
                total += projector_bytes(shape, r, s.proj_type, elem)
        elif method == "galore-adafactor":
            # adafactor.py: the grad is upcast (`grad.float()`) before projection, so the
            # projector is always an fp32 view and every state fp32; RMS is a 0-d fp32 tensor
            total += F32  # state["RMS"] = self._rms(p_data_fp32)
            low = low_shape(shape, r, s.proj_type) if it.projected else shape
            if len(low) >= 2:  # exp_avg_sq_row (shape[:-1]) + exp_avg_sq_col
                total += (prod(low[:-1]) + prod(low[:-2]) * low[-1]) * F32
            else:
                total += n * F32
            if it.projected:
                total += projector_bytes(shape, r, s.proj_type, F32)
        else:  # galore8bit: init_state runs after p.data was swapped for the low-rank buffer
            total += bnb_state_bytes(n)
            if it.projected or not s.layerwise:  # a GaLoreAdamW8bit parameter
                total += BNB_UNORM_BYTES
            n8 += n >= BNB_MIN_8BIT
            if it.projected:
                total += projector_bytes(shape, r, s.proj_type, elem)
    if method == "galore8bit" and n8:  # qmap1/qmap2 (fill_qmap), one pair per optimizer
        # object: shared by the whole optimizer, or one per 8-bit parameter in per-layer mode
        total += BNB_QMAP_BYTES * (n8 if s.layerwise else 1)
    return total


# ---- the step replayed on the tape ------------------------------------------------------------
class _Locals:
    """A Python frame's local variables: binding a name releases what it held before, after
    the new value exists (the right-hand side is evaluated first)."""

    def __init__(self) -> None:
        self.vars: dict[str, Any] = {}

    def bind(self, name: str, t: Tensor | None) -> None:
        old = self.vars.get(name)
        self.vars[name] = t
        if old is not None:
            old.drop()

    def clear(self) -> None:
        for t in self.vars.values():
            if t is not None:
                t.drop()
        self.vars.clear()


class _Replay:
    """galore_torch's `step()` for one parameter at a time, written against a memplan Tape."""

    def __init__(
        self, tape: Tape, method: str, s: GaLoreSettings, elem: int, refresh: bool
    ) -> None:
        self.tape, self.method, self.s, self.elem, self.refresh = tape, method, s, elem, refresh

    def a(self, numel: int, elem: int) -> Tensor:
        return self.tape.alloc(numel, elem, name="galore", cat="temporaries")

    def svd_projector(self, shape: tuple[int, ...], grad_elem: int) -> None:
        """GaLoreProjector.get_orthogonal_matrix on the full gradient, then the assignment
        `self.ortho_matrix = ...` (the old projector dies; the state total is unchanged)."""
        m, n = shape
        k, r = min(m, n), self.s.rank
        frame = _Locals()
        if grad_elem != F32:
            frame.bind("matrix", self.a(m * n, F32))  # module_params.data.float()
        u, sv, vh = self.a(m * k, F32), self.a(k, F32), self.a(k * n, F32)  # linalg.svd
        frame.vars.update(U=u, s=sv, Vh=vh)
        diag = self.a(r * r, F32)  # torch.diag(s[:rank])
        if side(shape, self.s.proj_type) == "right":
            frame.bind("A", self.a(m * r, F32))  # U[:, :rank] @ diag (computed, unused)
            diag.drop()
            new = self.a(r * n, grad_elem) if grad_elem != F32 else vh.ref()  # B.type(...)
        else:
            frame.bind("B", self.a(r * n, F32))  # diag @ Vh[:rank, :]
            diag.drop()
            new = self.a(m * r, grad_elem) if grad_elem != F32 else u.ref()  # A.type(...)
        frame.clear()  # return: U, s, Vh, A/B and the fp32 copy go (unless `new` views them)
        new.drop()  # it replaces the old projector, counted in the state already

    def project_back(self, frame: _Locals, name: str, numel: int, elem: int) -> None:
        """`full_rank_grad = torch.matmul(...)` then `return full_rank_grad * self.scale`."""
        mm = self.a(numel, elem)
        scaled = self.a(numel, elem)
        mm.drop()
        frame.bind(name, scaled)

    # -- galore: adamw.py ------------------------------------------------------------------
    def adamw(self, frame: _Locals, it: Item, grad: Tensor) -> None:
        e, shape = self.elem, it.spec.shape
        frame.bind("grad", grad.ref())  # grad = p.grad
        n = it.numel
        if it.projected:
            if self.refresh:
                self.svd_projector(shape, e)
            n = prod(low_shape(shape, self.s.rank, self.s.proj_type))
            frame.bind("grad", self.a(n, e))  # low_rank_grad = torch.matmul(...)
        frame.bind("denom", self.a(n, e))  # exp_avg_sq.sqrt().add_(eps)
        frame.bind("norm_grad", self.a(n, e))  # exp_avg / denom
        if it.projected:
            self.project_back(frame, "norm_grad", it.numel, e)
        # p.add_(norm_grad, alpha=-step_size): in place

    # -- galore-adafactor: adafactor.py ------------------------------------------------------
    def adafactor(self, frame: _Locals, it: Item, grad: Tensor) -> None:
        e, shape = self.elem, it.spec.shape
        frame.bind("grad", grad.ref())
        if e != F32:
            frame.bind("grad", self.a(it.numel, F32))  # grad = grad.float()
        low = shape
        if it.projected:
            if self.refresh:
                self.svd_projector(shape, F32)
            low = low_shape(shape, self.s.rank, self.s.proj_type)
            frame.bind("grad", self.a(prod(low), F32))
        n = prod(low)
        # p_data_fp32 = p.float() for a half-precision weight, else p itself
        frame.bind("p_data_fp32", None)  # `p_data_fp32 = p` frees the previous copy first
        if e != F32:
            frame.bind("p_data_fp32", self.a(it.numel, F32))
        self._scalar_pair()  # state["RMS"] = tensor.norm(2) / sqrt(numel)
        pw = self.a(n, F32)  # grad ** 2
        frame.bind("update", self.a(n, F32))  # ... + eps[0]
        pw.drop()
        if len(low) >= 2:
            rows, cols = prod(low[:-1]), prod(low[:-2]) * low[-1]
            self.a(rows, F32).drop()  # update.mean(dim=-1)
            self.a(cols, F32).drop()  # update.mean(dim=-2)
            # _approx_sq_grad: row / row.mean(-1, keepdim), col.unsqueeze(-2).rsqrt(), mul
            rm = self.a(prod(low[:-2]), F32)
            r_factor = self.a(rows, F32)
            rm.drop()
            c_factor = self.a(cols, F32)
            full = self.a(n, F32)
            r_factor.drop()
            c_factor.drop()
            frame.bind("update", full)
        else:
            frame.bind("update", self.a(n, F32))  # exp_avg_sq.rsqrt().mul_(grad)
        self._scalar_pair()  # update.div_((self._rms(update) / clip).clamp_(min=1.0))
        if it.projected:
            self.project_back(frame, "update", it.numel, F32)
        self.a(it.numel, F32).drop()  # p_data_fp32.add_(-update): the negation
        # p.copy_(p_data_fp32): in place

    def _scalar_pair(self) -> None:
        norm = self.a(1, F32)
        self.a(1, F32).drop()
        norm.drop()

    # -- galore8bit: adamw8bit.py (CUDA only; estimated, not measured here) ------------------
    def adamw8bit(
        self, frame: _Locals, it: Item, grad: Tensor, grads: dict[int, Tensor], key: int
    ) -> None:
        if not it.projected:
            return  # update_step: bitsandbytes' in-place 8-bit (or 32-bit) kernel
        tape, e, shape, numel = self.tape, self.elem, it.spec.shape, it.numel
        if self.refresh:
            self.svd_projector(shape, e)
        n = prod(low_shape(shape, self.s.rank, self.s.proj_type))
        low = self.a(n, e)  # grad = projector.project(p.grad, step)
        saved = self.a(numel, e)  # p.saved_data = p.data.clone()
        data = self.a(n, e)  # p.data = grad.clone().to(...): the weight's storage dies
        w = tape.size(numel * e)
        tape.base["weights"] -= w
        tape.check()
        # p.grad = grad: the full gradient dies; the low-rank one is .grad until zero_grad
        tape.live["temporaries"] -= tape.size(low.nbytes)
        low.cat = "gradients"
        tape.live["gradients"] += tape.size(low.nbytes)
        grads.pop(key).drop()
        grads[key] = low
        frame.bind("grad", low.ref())
        # update_step: in place. p.data = p.saved_data.add_(projector.project_back(p.data))
        mm = self.a(numel, e)
        scaled = self.a(numel, e)
        mm.drop()
        tape.base["weights"] += w
        tape.live["temporaries"] -= tape.size(saved.nbytes)
        saved.alive = False  # now the weight again (counted in the base)
        tape._live.pop(id(saved), None)  # (debug listing)
        scaled.drop()
        data.drop()

    def param(self, frame: _Locals, it: Item, key: int) -> None:
        grads = self.tape.param_grads
        g = grads.get(key)
        if g is None:
            return
        if self.method == "galore":
            self.adamw(frame, it, g)
        elif self.method == "galore-adafactor":
            self.adafactor(frame, it, g)
        else:
            self.adamw8bit(frame, it, g, grads, key)


def estimate_step(b: StepBuilder) -> None:
    """GaLore's estimate: both kinds of step on fresh tapes; `b` keeps the worse."""
    s = resolve(b.options.get("galore"), b.cfg)
    estimate_kinds(b, s, lambda sb, refresh: replay_step(sb, s, refresh))


def estimate_kinds(
    b: StepBuilder, s: GaLoreSettings, replay: Callable[[StepBuilder, bool], None]
) -> None:
    """`replay(builder, refresh)` for each kind of step `s` asks for (both: ordinary and
    refresh), each on a fresh tape; `b` keeps the worse and reports both in its info. Shared
    by plain GaLore and the hybrid split with a GaLore first-order part."""
    kinds = ["ordinary", "refresh"] if s.step_kind == "both" else [s.step_kind]
    if s.effective_gap == 1:
        kinds = ["refresh"]
    runs = {}
    for kind in kinds:
        sb = b.fresh()
        replay(sb, kind == "refresh")
        runs[kind] = sb
    totals = {k: max(p.total for p in sb.tape.peaks.values()) for k, sb in runs.items()}
    worst = max(totals, key=lambda k: totals[k])
    b.tape = runs[worst].tape
    b.params, b.specs = runs[worst].params, runs[worst].specs
    b.info.update(runs[worst].info)
    b.info.update(
        galore_step=worst,
        galore_steps=totals,
        galore_rank=s.rank,
        galore_update_proj_gap=s.effective_gap,
        galore_layerwise=s.layerwise,
    )


def replay_step(
    b: StepBuilder,
    s: GaLoreSettings,
    refresh: bool,
    method: str | None = None,
    trainable: Callable[[str], bool] = everything,
    before: Callable[[], None] | None = None,
    **program_kw: Any,
) -> None:
    """One GaLore step on `b`'s tape. `method`: the GaLore optimizer (default: `b`'s method);
    `trainable`: the parameters GaLore steps (the others are frozen weights, with no state);
    `before()`: what runs on the tape ahead of the forward (the hybrid split's ZO part; it
    adds its own state to `tape.base["optimizer_state"]`); `program_kw`: for `b.setup` (the
    hybrid split's `grad_from`)."""
    prog = b.setup(trainable=trainable, **program_kw)
    tape, elem = b.tape, b.elem
    method = method or b.spec.name
    items = optimizer_order(b.cfg, s, trainable)
    by_name = {it.spec.name: it for it in items}
    replay = _Replay(tape, method, s, elem, refresh)
    tape.base["optimizer_state"] = state_bytes(method, items, s, elem)
    if before is not None:
        before()
    if s.layerwise:

        def hook(p: Tensor, g: Tensor) -> None:
            # optimizer_dict[p].step(); optimizer_dict[p].zero_grad(): a fresh frame per call
            frame = _Locals()
            replay.param(frame, by_name[p.name], id(p))
            frame.clear()
            tape.param_grads.pop(id(p)).drop()

        tape.grad_hook = hook
    tape.set_phase("forward")
    loss = prog.forward()
    tape.set_phase("backward")
    tape.backward(loss)
    tape.set_phase("optimizer")
    if not s.layerwise:
        frame = _Locals()  # one step() frame: loop variables live across parameters
        for it in items:
            replay.param(frame, it, id(b.params[it.spec.name]))
        frame.clear()
    tape.free_param_grads()


# ---- the runnable step (torch imported lazily) ------------------------------------------------
def make_optimizers(
    method: str,
    model: Any,
    cfg: ModelConfig,
    s: GaLoreSettings,
    gap: int,
    keep: Callable[[str], bool] = everything,
) -> Any:
    """galore_torch optimizers with torchrun_main.py's param groups; per-layer mode: a dict
    {param: optimizer} (the plain parameters of galore8bit get bnb.optim.Adam8bit there).
    `keep`: the parameters (by name) to optimize, e.g. the hybrid split's deep part; the
    others are left out of every group."""
    import galore_torch

    names = {p.name for p in projected(cfg) if keep(p.name)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and keep(n)]
    missing = names - {n for n, _ in named}
    if missing:
        raise MemplanError(f"GaLore: the model has no parameter {sorted(missing)[0]}")
    galore_kw = {"rank": s.rank, "update_proj_gap": gap, "scale": s.scale}
    galore_kw["proj_type"] = s.proj_type

    def make(groups: list[dict]) -> Any:
        if method == "galore":
            return galore_torch.GaLoreAdamW(
                groups, lr=s.lr, weight_decay=0.0, no_deprecation_warning=True
            )
        if method == "galore-adafactor":  # torchrun_main.py's galore_adafactor settings
            return galore_torch.GaLoreAdafactor(
                groups,
                lr=s.lr,
                eps=(1e-30, 1e-3),
                clip_threshold=1.0,
                decay_rate=-0.8,
                beta1=None,
                weight_decay=0.0,
                relative_step=False,
                scale_parameter=False,
                warmup_init=False,
            )
        return galore_torch.GaLoreAdamW8bit(groups, lr=s.lr, weight_decay=0.0)

    if not s.layerwise:
        regular = [p for n, p in named if n not in names]
        proj = [p for n, p in named if n in names]
        return make([{"params": regular}, {"params": proj, **galore_kw}])
    out = {}
    for n, p in named:
        if n in names:
            out[p] = make([{"params": [p], **galore_kw}])
        elif method == "galore8bit":
            import bitsandbytes as bnb

            out[p] = bnb.optim.Adam8bit([p], lr=s.lr, weight_decay=0.0)
        else:
            out[p] = make([{"params": [p]}])
    return out


CUDA_ONLY = "galore8bit runs bitsandbytes CUDA kernels: use --device cuda"
ONE_KIND = "a measurement runs one kind of GaLore step: use --galore-step ordinary or refresh"


def build_step(ctx: RunContext) -> Step:
    """The runnable step: the model, the galore_torch optimizer(s) and the step to measure.
    galore8bit's CUDA-only rule is its spec's (`devices`): GaLoreAdamW8bit.step calls
    torch.cuda.synchronize() after every parameter (a test stubs it to build it on CPU)."""
    s = resolve(ctx.options.get("galore"), ctx.cfg)
    if s.step_kind == "both":
        raise MemplanError(ONE_KIND)
    # the warm-up step refreshes (every projector starts empty, step 0); the measured step is
    # step 1 of each projector: a refresh iff 1 % update_proj_gap == 0, i.e. a gap of 1
    gap = 1 if s.step_kind == "refresh" else s.effective_gap
    model = ctx.model()
    opt = make_optimizers(ctx.spec.name, model, ctx.cfg, s, gap)
    info = {"galore_step": s.step_kind, "galore_rank": s.rank, "galore_layerwise": s.layerwise}
    if not s.layerwise:
        step = ctx.step(model, [opt])
    else:
        for p in opt:
            p.register_post_accumulate_grad_hook(_hook(opt))
        step = ctx.step(model, list(opt.values()), layerwise_step)
    step.info.update(info)
    return step


def _hook(optimizers: dict) -> Callable:
    def optimizer_hook(p: Any) -> None:  # torchrun_main.py
        if p.grad is None:
            return
        optimizers[p].step()
        optimizers[p].zero_grad()

    return optimizer_hook


def layerwise_step(step: Step, phase: Callable[[str], None]) -> None:
    """Forward and backward; every parameter's optimizer runs inside backward from its hook."""
    phase("forward")
    with step.autocast():
        loss = step.model(**step.batch).loss
    phase("backward")
    loss.backward()
    del loss
    phase("optimizer")  # nothing left to do: weights and state only
    phase("end")


GALORE_SETTINGS = register_settings(
    SettingsGroup(
        "galore",
        GaLoreSettings,
        (
            Knob(
                "rank",
                int,
                None,
                "GaLore: projection rank (default: the preset's GaLore rank, else 128)",
            ),
            Knob(
                "update_proj_gap",
                int,
                None,
                "GaLore: refresh the projector every T steps (default 200)",
            ),
            Knob(
                "scale", float, GaLoreSettings.scale, "GaLore: scale of the projected-back update"
            ),
            Knob("proj_type", str, GaLoreSettings.proj_type, "GaLore: " + " | ".join(PROJ_TYPES)),
            Knob(
                "layerwise",
                bool,
                GaLoreSettings.layerwise,
                "GaLore: per-parameter optimizer steps inside backward",
            ),
            Knob(
                "galore_step",
                str,
                GaLoreSettings.step_kind,
                "GaLore step to report: ordinary | refresh (SVD) | both (the worse)",
                field="step_kind",
            ),
        ),
    )
)
KNOBS = tuple(k.name for k in GALORE_SETTINGS.knobs)


def step_kinds(options: dict[str, Any]) -> tuple[str, dict[str, dict]] | None:
    """GaLore's two kinds of step as separate options (`--galore-step both`, the default), for
    callers that estimate them apart (the planner's depth extrapolation); None for one kind."""
    gs = options.get("galore") or GaLoreSettings()
    if gs.step_kind != "both":
        return None
    return "galore", {
        k: {**options, "galore": replace(gs, step_kind=k)} for k in ("ordinary", "refresh")
    }


def measured_kind(options: dict[str, Any], est_info: dict[str, Any]) -> dict[str, Any]:
    """The options to measure with: `both` becomes the kind the estimate says peaks."""
    gs = options.get("galore") or GaLoreSettings()
    return {**options, "galore": gs.measured(est_info)}


def describe(info: dict[str, Any]) -> list[str]:
    """The report line: rank, gap, per-layer mode and which step peaks."""
    if "galore_steps" not in info:
        return []
    gib = 2**30
    steps = ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in info["galore_steps"].items())
    layerwise = ", per-layer updates" if info.get("galore_layerwise") else ""
    return [
        f"GaLore rank {info['galore_rank']}, update_proj_gap {info['galore_update_proj_gap']}"
        f"{layerwise}: the {info['galore_step']} step peaks ({steps})"
    ]


def _galore(name: str, summary: str, note: str | None, order: int, **kw) -> MethodSpec:
    cands = ()
    if note is not None:
        cands = tuple(
            Candidate(
                name + (" --layerwise" if lw else ""),
                "GaLore",
                note + ("; per-layer updates inside backward" if lw else ""),
                order + lw,
                options=lambda lw=lw: {"galore": GaLoreSettings(layerwise=lw)},
            )
            for lw in (False, True)
        )
    return MethodSpec(
        name,
        "galore",
        summary,
        estimate_step,
        build_step,
        settings=("galore",),
        knobs=KNOBS,
        candidates=cands,
        step_kinds=step_kinds,
        describe=describe,
        **kw,
    )


for _spec in (
    _galore(
        "galore",
        "GaLore AdamW: projector + low-rank moments for attention/MLP weights",
        "GaLore AdamW: low-rank optimizer state, full-parameter training",
        0,
        aliases=("galore-adamw",),
    ),
    _galore(
        "galore8bit",
        "GaLore with bitsandbytes 8-bit AdamW states (low-rank)",
        "GaLore with 8-bit states (CUDA)",
        2,
        aliases=("galore-adamw8bit",),
        devices=("cuda",),
        device_hint=CUDA_ONLY,
    ),
    _galore(
        "galore-adafactor",
        "GaLore with Adafactor: factored fp32 second moment of the low-rank gradient",
        None,
        4,
    ),
):
    register(_spec)
