"""Run the real training step on a backend and return a Breakdown.

- cpu: real CPU tensors, live storage bytes tracked by `StorageTracker`;
- meta: the same HF model and torch optimizer on meta tensors (no values, exact shapes and
  dtypes), so a 7B step runs in seconds on any machine; SDPA is routed to the flash kernel's
  meta implementation and AMP uses CUDA autocast's policy (memplan.measure.emulation);
- cuda: the allocator's peaks plus NVML (memplan.measure.cuda).

One warm-up step runs first, so lazily created optimizer state exists when the measured step
starts, as it does from the second step of a real run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from memplan.activations import attention_kernel
from memplan.breakdown import PHASES, Breakdown
from memplan.errors import MemplanError
from memplan.estimate import check_sequence
from memplan.methods import MethodSpec, get_method, require_available
from memplan.methods.zo import ZOOptimizer, ZOSettings
from memplan.models import ModelConfig, load_config
from memplan.workload import WORKLOAD_FIELDS, Workload


@dataclass
class RunContext:
    """What a method's step builder gets: config, method, workload, options, and helpers that
    build the model (with the workload's dtype, attention and checkpointing), the synthetic
    batch and the autocast context. A family registers `fn(ctx) -> Step` in `BUILDERS`."""

    cfg: ModelConfig
    spec: MethodSpec
    wl: Workload
    options: dict[str, Any]

    @property
    def torch_dtype(self):
        import torch

        return {
            "fp32": torch.float32,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
            "amp": torch.float32,
        }[self.wl.dtype]

    def model(self, trainable: Callable[[str], bool] | None = None):
        """The HF training model on the workload's device; parameters whose name fails
        `trainable` get requires_grad=False."""
        from memplan.measure.emulation import emulation_modes
        from memplan.models.hf import build_model

        wl = self.wl
        model = build_model(
            self.cfg, device=wl.device, dtype=self.torch_dtype, attn_implementation=wl.attn
        )
        model.train()
        if trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(trainable(name))
        if wl.checkpointing:
            kwargs: dict = {"use_reentrant": False}
            if wl.device != "cuda":
                # `loss.backward()` runs inside the function modes' own handlers, where they
                # are disabled: the recomputation in backward gets them back through context_fn
                kwargs["context_fn"] = lambda: (nullcontext(), emulation_modes(wl))
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return model

    def batch(self) -> dict:
        from memplan.measure.step import synthetic_batch

        return synthetic_batch(self.cfg.vocab_size, self.wl.batch, self.wl.seq, self.wl.device)

    def autocast(self) -> Callable[[], AbstractContextManager]:
        """The autocast context of the workload (CUDA autocast, or its emulation off CUDA)."""
        import torch

        from memplan.measure.emulation import CudaAutocastEmulation

        if self.wl.dtype != "amp":
            return nullcontext
        if self.wl.device == "cuda":
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return lambda: CudaAutocastEmulation(torch.bfloat16)

    def step(
        self, model, optimizers: list, run=None, batch: dict | None = None, training: bool = True
    ):
        """The Step; `training` False: the method runs its forwards in eval() mode."""
        from memplan.measure.step import Step

        return Step(
            model,
            batch if batch is not None else self.batch(),
            optimizers,
            autocast=self.autocast(),
            run=run,
            info={"attention_kernel": attention_kernel(self.cfg, self.wl, training)},
        )


def build_step(
    cfg: ModelConfig, method: str, wl: Workload, zo: ZOSettings | None = None, **options: Any
):
    """The model, a synthetic batch and the optimizer(s) for one step of `method` on
    `wl.device`; `options` holds family settings by family name (as for `estimate`)."""
    spec = get_method(method)
    opts = {"zo": zo or ZOSettings(), **{k: v for k, v in options.items() if v is not None}}
    builder = BUILDERS.get(spec.name, BUILDERS.get(spec.family))  # a method's own step first
    if builder is None:
        raise MemplanError(f"method '{spec.name}' has no runnable step yet")
    return builder(RunContext(cfg, spec, wl, opts))


def _build_fo(ctx: RunContext):
    from memplan.methods.fo import make_optimizer

    wl = ctx.wl
    if wl.optimizer_impl == "fused" and wl.device == "meta":
        raise MemplanError(
            "torch's fused optimizers have no meta kernels; use --optimizer-impl foreach or "
            "forloop with --device meta, or run fused on --device cpu or cuda"
        )
    model = ctx.model()
    params = [p for p in model.parameters() if p.requires_grad]
    return ctx.step(model, [make_optimizer(ctx.spec.name, params, wl.optimizer_impl)])


def _build_zo(ctx: RunContext):
    from memplan.measure.step import zo_step

    zo = zo_settings_for(ctx.options["zo"], ctx.wl.device)
    model = ctx.model()
    opt = ZOOptimizer(model.named_parameters(), ctx.spec.name, zo)
    step = ctx.step(model, [opt], zo_step, training=False)
    step.info["zo_impl"] = zo.impl
    return step


def zo_settings_for(zo: ZOSettings, device: str) -> ZOSettings:
    """`zo` with its perturbation impl resolved for `device`; the fused Triton kernel needs a
    CUDA tensor (or Triton's interpreter) and is refused on meta tensors, which have no data."""
    from dataclasses import replace

    from memplan.methods.zo import resolve_impl

    impl = resolve_impl(zo.impl, device)
    if impl == "fused":
        if device == "meta":
            raise MemplanError(
                "the fused perturbation kernel needs real tensors; use --impl chunked or "
                "reference with --device meta"
            )
        from memplan_kernels import triton_available

        if not triton_available(device):
            raise MemplanError(
                f"--impl fused needs Triton for {device} tensors (pip install triton; on CPU "
                "set TRITON_INTERPRET=1 before starting); or use --impl chunked"
            )
    return replace(zo, impl=impl)


def _build_hybrid(ctx: RunContext):
    from memplan.methods.hybrid import build_step as build

    return build(ctx)


def _build_peft(ctx: RunContext):
    from memplan.methods.peft import build_step as build

    return build(ctx)


def _build_inference(ctx: RunContext):
    from memplan.measure.step import inference_step

    return ctx.step(ctx.model(), [], inference_step, training=False)


def _build_forward_grad(ctx: RunContext):
    from memplan.methods.forward_grad import build_step as build

    return build(ctx)


def _build_galore(ctx: RunContext):
    from memplan.methods.galore import build_step as build

    return build(ctx)


# method name or family -> the function that builds its runnable step (the name wins)
BUILDERS: dict[str, Callable[[RunContext], Any]] = {
    "fo": _build_fo,
    "zo": _build_zo,
    "forward-grad": _build_forward_grad,
    "hybrid": _build_hybrid,
    "inference": _build_inference,
    "peft": _build_peft,  # lora, prefix, prompt (memplan.methods.peft)
    "galore": _build_galore,
}


def measure(
    model: str | ModelConfig,
    method: str = "adamw",
    workload: Workload | None = None,
    zo: ZOSettings | None = None,
    **options: Any,
) -> Breakdown:
    """Run one warm-up and one measured training step on `workload.device` (`zo` and
    `options` as for `memplan.estimate.estimate`)."""
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload(device="cpu")
    spec = require_available(get_method(method))
    check_sequence(cfg, wl.seq)
    if spec.name == "adam8bit" and wl.device != "cuda":
        raise MemplanError("adam8bit runs bitsandbytes CUDA kernels: use --device cuda")
    if wl.device == "cuda":
        from memplan.measure.cuda import measure_cuda, require_cuda

        require_cuda()
        step = build_step(cfg, spec.name, wl, zo, **options)
        bd = measure_cuda(step)
        bd.info.update(step.info)
    else:
        bd = _measure_tracked(cfg, spec.name, wl, zo, options)
    bd.info.update(
        model=cfg.name,
        family=cfg.family,
        method=spec.name,
        **{k: getattr(wl, k) for k in WORKLOAD_FIELDS},
    )
    return bd


def _measure_tracked(
    cfg: ModelConfig, method: str, wl: Workload, zo: ZOSettings | None, options: dict[str, Any]
) -> Breakdown:
    from memplan.measure.emulation import emulation_modes
    from memplan.measure.tracker import StorageTracker, model_classifier

    t0 = time.perf_counter()
    step = build_step(cfg, method, wl, zo, **options)
    tracker = StorageTracker(model_classifier(step.model, lambda: step.optimizers))
    tracker.register([*step.model.parameters(), *step.model.buffers(), *step.batch.values()])
    with ExitStack() as stack:
        stack.enter_context(emulation_modes(wl, autocast=False))
        stack.enter_context(tracker)
        step(tracker.set_phase)  # warm-up: optimizer state is created here
        tracker.reset_peaks()
        step(tracker.set_phase)
    phases = {k: v for k, v in tracker.peaks.items() if k in PHASES}
    return Breakdown(
        source=wl.device,
        phases=phases,
        info={
            **step.info,
            "ops": tracker.n_ops,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
