"""Hybrid ZO/FO layer split: its memory model and its runnable step, side by side.

Split the network at layer K (`--zo-layers K`, alias `--split K`): the shallow part (the
embeddings and layers 0..K-1) is trained zeroth-order, the deep part (layers K..L-1, the final
norm and the head) first-order. One step:

1. ZO on the shallow part (skipped when K = 0): perturb only the shallow parameters by +eps z,
   a no-grad forward of the whole model in eval() mode, -2 eps z, forward, +eps z to restore,
   the ZO update of the shallow parameters (memplan.methods.zo; the deep parameters are left
   untouched by these forwards).
2. FO on the deep part (skipped when K = L): a train() forward whose embeddings and shallow
   layers run under no_grad (a forward pre-hook on the input embeddings turns grad mode off and
   one on layer K turns it back on), so no autograd graph is built below layer K and
   back-propagation stops there; backward; the FO optimizer steps the deep parameters only.

Memory = weights + FO state of the deep part + ZO state of the shallow part + the larger of
(the ZO forwards' inference working set + perturbation temporaries) and (the deep part's saved
activations, gradients and optimizer temporaries). K = 0 is plain FO and K = L plain ZO, to the
byte (tests/test_hybrid.py).

Tied embeddings (OPT, RoBERTa: the input embedding is the LM head's weight): for K < L the tied
weight is the head and is trained first-order (its gradient comes from the head alone: the
input-side lookup runs under no_grad); at K = L everything, the tied weight included, is
trained zeroth-order. The FO optimizer is one of memplan's first-order torch optimizers
(fo-sgd, fo-sgd-mmt, fo-adam, adamw, adafactor; adam8bit on CUDA) or GaLore (galore,
galore-adafactor; galore8bit on CUDA) over the deep parameters only, with options["galore"]
(memplan.methods.galore.GaLoreSettings): GaLore's replay and optimizers, both kinds of step
estimated, one measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memplan.errors import MemplanError
from memplan.knobs import Knob
from memplan.methods import galore
from memplan.methods.base import (
    MethodSpec,
    SettingsGroup,
    get_method,
    methods,
    register,
    register_settings,
)
from memplan.methods.fo import fo_memory, make_optimizer
from memplan.methods.replay import OptimizerMemory, StepBuilder, replay_fo_step
from memplan.methods.zo import ZOOptimizer, for_device, zo_memory
from memplan.programs import program_for
from memplan.runtime.context import RunContext


def fo_choices() -> list[str]:
    """The first-order part's choices: every registered first-order optimizer and GaLore
    (whose settings come from options["galore"], memplan.methods.galore)."""
    return [m.name for m in methods(("fo", "galore"))]


def zo_choices() -> list[str]:
    """The zeroth-order part's choices: the ZO methods with an update rule (not forward-grad)."""
    return [m.name for m in methods("zo") if isinstance(m.model, str)]


_LAYER = re.compile(r"\.(layers|layer|h)\.(\d+)\.")  # GPT-2: transformer.h.<i>.


@dataclass(frozen=True)
class HybridSettings:
    """The split: `zo_layers` (K) shallow layers trained ZO by `zo`, the rest FO by `fo`.
    `zo_layers` None: the caller (the planner) has not chosen yet; estimate/measure refuse it."""

    zo_layers: int | None = None
    fo: str = "adamw"
    zo: str = "zo-sgd"

    def __post_init__(self) -> None:
        fo = get_method(self.fo).name
        zo = get_method(self.zo).name
        if fo not in fo_choices():
            raise MemplanError(
                f"--fo must be a first-order optimizer ({', '.join(fo_choices())}); got '{self.fo}'"
            )
        if zo not in zo_choices():
            raise MemplanError(
                f"--zo must be a zeroth-order method ({', '.join(zo_choices())}); got '{self.zo}'"
            )
        object.__setattr__(self, "fo", fo)
        object.__setattr__(self, "zo", zo)
        if self.zo_layers is not None and self.zo_layers < 0:
            raise MemplanError(f"--zo-layers must be 0 or more, got {self.zo_layers}")

    def checked(self, num_layers: int) -> int:
        """K, checked against the model's layer count."""
        if self.zo_layers is None:
            raise MemplanError(
                "--method hybrid needs the split: --zo-layers K (0 = plain FO, "
                f"{num_layers} = plain ZO), or let `memplan plan` choose it"
            )
        if self.zo_layers > num_layers:
            raise MemplanError(
                f"--zo-layers {self.zo_layers} is more than the model's {num_layers} layers; "
                f"use 0..{num_layers}"
            )
        return self.zo_layers


def zo_part(cfg, k: int) -> Callable[[str], bool]:
    """Whether a parameter (by its HF name) belongs to the shallow, zeroth-order part of the
    split at K: layers < K, and the embeddings (everything under an embeddings module, OPT's
    project_in) when K >= 1, except a weight tied to the head while K < L."""
    n = cfg.num_layers

    def shallow(name: str) -> bool:
        if k >= n:
            return True
        if k == 0:
            return False
        m = _LAYER.search(name)
        if m:
            return int(m.group(2)) < k
        if "embed" in name or "project_in" in name or name in _GPT2_EMBEDDINGS:
            return not (cfg.tie_word_embeddings and _is_input_embedding(cfg, name))
        return False

    return shallow


_GPT2_EMBEDDINGS = ("transformer.wte.weight", "transformer.wpe.weight")


def _is_input_embedding(cfg, name: str) -> bool:
    return name in (
        "model.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
        "roberta.embeddings.word_embeddings.weight",
        "transformer.wte.weight",
    )


# ---- memory model (no torch) --------------------------------------------------------------------
def _uses_galore(hs: HybridSettings) -> bool:
    return get_method(hs.fo).kind == "galore"


def estimate_step(b: StepBuilder) -> None:
    """The split's estimate: the ZO part's perturbation and inference forward
    (eval mode, shallow weights frozen as in the run), then the deep part's FO forward (no_grad
    below layer K), backward and optimizer step. Both parts' optimizer states are kept
    throughout. A GaLore FO part (`--fo galore|galore8bit|galore-adafactor`) is GaLore's own
    replay over the deep parameters (memplan.methods.galore), both kinds of step, the worse
    kept."""
    hs: HybridSettings = b.options.get("hybrid") or HybridSettings()
    cfg = b.cfg
    k = hs.checked(cfg.num_layers)
    shallow = zo_part(cfg, k)
    # the shallow weights are frozen for the FO pass; at K = L nothing is (as in plain ZO,
    # where every weight requires grad: autocast caches their casts)
    frozen = shallow if k < cfg.num_layers else (lambda _n: False)

    def trainable(n: str) -> bool:
        return not frozen(n)

    if _uses_galore(hs) and k < cfg.num_layers:
        _estimate_galore_fo(b, hs, k, shallow, trainable)
        return
    prog = b.setup(trainable=trainable, grad_from=k)
    fo_shapes = [p.shape for p in b.specs if not shallow(p.name)]
    zm = _zo_memory(b, hs, k, shallow)
    om = fo_memory(hs.fo, fo_shapes, b.elem, b.wl.optimizer_impl) if fo_shapes else None
    zo_state = zm.state_bytes if zm else 0
    b.tape.base["optimizer_state"] = zo_state + (om.state_bytes if om else 0)
    _zo_part(b, zm)
    if om is not None:  # replay_fo_step sets the optimizer state it is given: both parts'
        replay_fo_step(b.tape, prog, OptimizerMemory(zo_state + om.state_bytes, om.step_temp_bytes))
    b.info["attention_kernel"] = prog.kern.attention


def _estimate_galore_fo(b, hs: HybridSettings, k: int, shallow, trainable) -> None:
    """GaLore as the FO part: galore's replay over the deep parameters (projected = the deep
    attention/MLP weights, regular = the other deep parameters, state for those only), with
    the ZO part on the tape ahead of the FO forward; per-layer updates run from the tape's
    grad_hook inside backward, as in plain GaLore. Every kind of step asked for runs on a
    fresh tape and the worse is kept (galore.estimate_kinds)."""
    gs = galore.resolve(b.options.get("galore"), b.cfg)

    def replay(sb, refresh: bool) -> None:
        def before() -> None:  # after setup: sb.specs and sb.params exist
            zm = _zo_memory(sb, hs, k, shallow)
            sb.tape.base["optimizer_state"] += zm.state_bytes if zm else 0
            _zo_part(sb, zm)

        galore.replay_step(
            sb, gs, refresh, method=hs.fo, trainable=trainable, before=before, grad_from=k
        )

    galore.estimate_kinds(b, gs, replay)


def _zo_memory(b, hs: HybridSettings, k: int, shallow):
    """The ZO part's memory (None when K = 0), and its settings in b.info."""
    zs = for_device(b.options["zo"], b.wl.device)
    b.info.update(zo_layers=k, fo=hs.fo, zo=hs.zo, zo_impl=zs.impl)
    zo_shapes = [p.shape for p in b.specs if shallow(p.name)]
    return zo_memory(hs.zo, zo_shapes, b.elem, zs) if zo_shapes else None


def _zo_part(b, zm) -> None:
    """The ZO part on b's tape: perturbation, the no-grad forward (eval mode), the update."""
    if zm is None:
        return
    tape = b.tape
    # `phase_tags` (the planner's depth extrapolation): the ZO part's forward and update peaks
    # are kept apart from the FO part's as "zo-forward" / "zo-optimizer"
    tag = "zo-" if b.options.get("phase_tags") else ""
    tape.set_phase("perturbation")
    tape.transient(zm.perturb_temp_bytes)
    zo_prog = program_for(b.cfg)(tape, b.cfg, b.wl, b.params, training=False)
    tape.set_phase(tag + "forward")
    with tape.no_grad():  # as replay.replay_inference
        zo_prog.forward().drop()
    tape.set_phase(tag + "optimizer")
    buf = tape.alloc(zm.grad_buffer_bytes, cat="gradients")
    tape.transient(zm.update_temp_bytes)
    buf.drop()


# ---- runnable step ------------------------------------------------------------------------------
def build_step(ctx: RunContext):
    """The hybrid Step on ctx's device: a ZOOptimizer over the shallow parameters, a torch
    optimizer (or GaLore's, memplan.methods.galore.make_optimizers) over the deep ones, and the
    grad-mode gate hooks on the model. Device needs (adam8bit, galore8bit: CUDA) are checked
    from the spec's `drives` before this runs."""
    hs: HybridSettings = ctx.options.get("hybrid") or HybridSettings()
    cfg, wl = ctx.cfg, ctx.wl
    k = hs.checked(cfg.num_layers)
    use_galore = _uses_galore(hs) and k < cfg.num_layers
    gs = None
    if use_galore:
        gs = galore.resolve(ctx.options.get("galore"), cfg)
        if gs.step_kind == "both":
            raise MemplanError(galore.ONE_KIND)
    zs = for_device(ctx.options["zo"], wl.device, run=True)
    shallow = zo_part(cfg, k)
    model = ctx.model()
    named = list(model.named_parameters())
    zo_opt = ZOOptimizer([(n, p) for n, p in named if shallow(n)], hs.zo, zs)
    if k < cfg.num_layers:  # frozen for the FO pass (at K = L every weight stays as in ZO)
        for n, p in named:
            if shallow(n):
                p.requires_grad_(False)
    deep = [p for n, p in named if not shallow(n)]
    info = {}
    if gs is not None:
        # as galore.build_step: the measured step refreshes iff the gap is 1
        gap = 1 if gs.step_kind == "refresh" else gs.effective_gap
        fo_opt = galore.make_optimizers(hs.fo, model, cfg, gs, gap, keep=lambda n: not shallow(n))
        if gs.layerwise:  # {param: optimizer}, stepped from hooks inside backward
            for p in fo_opt:
                p.register_post_accumulate_grad_hook(galore._hook(fo_opt))
        info = {
            "galore_step": gs.step_kind,
            "galore_rank": gs.rank,
            "galore_layerwise": gs.layerwise,
        }
    else:
        fo_opt = make_optimizer(hs.fo, deep, wl.optimizer_impl, wl.device) if deep else None
    gate = _install_gate(model, k) if 0 < k < cfg.num_layers else None
    fo_opts = list(fo_opt.values()) if isinstance(fo_opt, dict) else [fo_opt] * (fo_opt is not None)
    optimizers = [*([zo_opt] if zo_opt.params else []), *fo_opts]
    step = ctx.step(model, optimizers, _runner(zo_opt, fo_opt, gate))
    step.info.update(zo_layers=k, fo=hs.fo, zo=hs.zo, zo_impl=zo_opt.zs.impl, **info)
    return step


class _Gate:
    """Grad mode off from the input embeddings up to layer K during the FO forward only."""

    def __init__(self) -> None:
        self.active = False


def _install_gate(model, k: int) -> _Gate:
    import torch

    gate = _Gate()

    def off(_module, _args):
        if gate.active:
            torch.set_grad_enabled(False)

    def on(_module, _args):
        if gate.active:
            torch.set_grad_enabled(True)

    model.get_input_embeddings().register_forward_pre_hook(off)
    _layers(model)[k].register_forward_pre_hook(on)
    return gate


def _layers(model):
    base = model.base_model
    for path in ("layers", "decoder.layers", "encoder.layer", "h"):
        obj = base
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise MemplanError(f"cannot find the decoder/encoder layers of {type(model).__name__}")


def _runner(zo_opt, fo_opt, gate):
    import torch

    from memplan.runtime.step import run_zo_step

    def run(step, phase) -> None:
        if zo_opt.params:
            run_zo_step(step, phase)  # eval() mode, inference-mode forwards, ZO update
        if fo_opt is None:
            return
        step.model.train()
        phase("forward")
        with torch.enable_grad():  # restores grad mode even if the gate left it off
            if gate is not None:
                gate.active = True
            try:
                with step.autocast():
                    loss = step.model(**step.batch).loss
            finally:
                if gate is not None:
                    gate.active = False
        phase("backward")
        loss.backward()
        del loss
        phase("optimizer")
        if not isinstance(fo_opt, dict):  # a dict: GaLore's per-layer optimizers, run in backward
            fo_opt.step()
            fo_opt.zero_grad(set_to_none=True)
        phase("end")

    return run


HYBRID_SETTINGS = register_settings(
    SettingsGroup(
        "hybrid",
        HybridSettings,
        (
            Knob(
                "zo_layers",
                int,
                None,
                "hybrid: embeddings + layers < K trained zeroth-order (0 = plain FO, L = plain ZO)",
                aliases=("--split",),
            ),
            Knob(
                "fo",
                str,
                HybridSettings.fo,
                "hybrid: first-order optimizer of the deep part (GaLore: with --rank etc.)",
            ),
            Knob("zo", str, HybridSettings.zo, "hybrid: zeroth-order method of the shallow part"),
        ),
    )
)


def _hs(options: dict[str, Any]) -> HybridSettings:
    return options.get("hybrid") or HybridSettings()


def _drives(options: dict[str, Any]) -> tuple[str, ...]:
    hs = _hs(options)
    return (hs.fo, hs.zo)


def _step_kinds(options: dict[str, Any]):
    """A GaLore first-order part's two kinds of step (see galore.step_kinds)."""
    return galore.step_kinds(options) if _uses_galore(_hs(options)) else None


SPEC = register(
    MethodSpec(
        "hybrid",
        "hybrid",
        "embeddings + layers < K zeroth-order, layers >= K + head first-order",
        estimate_step,
        build_step,
        aliases=("zo-fo", "split"),
        settings=("hybrid", "zo", "galore"),
        knobs=("zo_layers", "fo", "zo"),
        drives=_drives,
        drives_kinds=("fo", "galore", "zo"),
        step_kinds=_step_kinds,
        describe=galore.describe,
    )
)
