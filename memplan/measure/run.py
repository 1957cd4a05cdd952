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
from contextlib import ExitStack, nullcontext

from memplan.activations import attention_kernel
from memplan.breakdown import PHASES, Breakdown
from memplan.errors import MemplanError
from memplan.estimate import check_sequence
from memplan.methods import get_method, require_available
from memplan.methods.zo import ZOOptimizer, ZOSettings
from memplan.models import ModelConfig, load_config
from memplan.workload import WORKLOAD_FIELDS, Workload


def build_step(cfg: ModelConfig, method: str, wl: Workload, zo: ZOSettings | None = None):
    """The model, a synthetic batch and the optimizer for one step of `method`, on
    `wl.device` (first-order, zeroth-order, or a no-grad forward for "inference")."""
    import torch

    from memplan.measure.emulation import CudaAutocastEmulation, emulation_modes
    from memplan.measure.step import Step, inference_step, synthetic_batch, zo_step
    from memplan.methods.fo import make_optimizer
    from memplan.models.hf import build_model

    dtype = {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "amp": torch.float32,
    }[wl.dtype]
    model = build_model(cfg, device=wl.device, dtype=dtype, attn_implementation=wl.attn)
    model.train()
    if wl.checkpointing:
        kwargs: dict = {"use_reentrant": False}
        if wl.device != "cuda":
            # `loss.backward()` runs inside the function modes' own handlers, where they are
            # disabled: the recomputation in backward gets them back through context_fn
            kwargs["context_fn"] = lambda: (nullcontext(), emulation_modes(wl))
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    family = get_method(method).family
    if family == "fo":
        if wl.optimizer_impl == "fused" and wl.device == "meta":
            raise MemplanError(
                "torch's fused optimizers have no meta kernels; use --optimizer-impl foreach or "
                "forloop with --device meta, or run fused on --device cpu or cuda"
            )
        opts = [make_optimizer(method, model.parameters(), wl.optimizer_impl)]
        run = None
    elif family == "zo":
        zo = zo or ZOSettings()
        if zo.impl == "fused" and wl.device == "meta":
            raise MemplanError(
                "the fused perturbation kernel needs real tensors; use --impl chunked or "
                "reference with --device meta"
            )
        opts = [ZOOptimizer(model.named_parameters(), method, zo)]
        run = zo_step
    else:  # inference
        opts, run = [], inference_step
    batch = synthetic_batch(cfg.vocab_size, wl.batch, wl.seq, wl.device)
    if wl.dtype == "amp":
        if wl.device == "cuda":

            def autocast():
                return torch.autocast("cuda", dtype=torch.bfloat16)
        else:

            def autocast():
                return CudaAutocastEmulation(torch.bfloat16)
    else:
        autocast = nullcontext
    return Step(model, batch, opts, autocast=autocast, run=run)


def measure(
    model: str | ModelConfig,
    method: str = "adamw",
    workload: Workload | None = None,
    zo: ZOSettings | None = None,
) -> Breakdown:
    """Run one warm-up and one measured training step on `workload.device`."""
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload(device="cpu")
    spec = require_available(get_method(method))
    check_sequence(cfg, wl.seq)
    if spec.name == "adam8bit" and wl.device != "cuda":
        raise MemplanError("adam8bit runs bitsandbytes CUDA kernels: use --device cuda")
    if wl.device == "cuda":
        from memplan.measure.cuda import measure_cuda, require_cuda

        require_cuda()
        step = build_step(cfg, spec.name, wl, zo)
        bd = measure_cuda(step)
    else:
        bd = _measure_tracked(cfg, spec.name, wl, zo)
    bd.info.update(
        model=cfg.name,
        family=cfg.family,
        method=spec.name,
        **{k: getattr(wl, k) for k in WORKLOAD_FIELDS},
    )
    return bd


def _measure_tracked(
    cfg: ModelConfig, method: str, wl: Workload, zo: ZOSettings | None
) -> Breakdown:
    from memplan.measure.emulation import emulation_modes
    from memplan.measure.tracker import StorageTracker, model_classifier

    t0 = time.perf_counter()
    step = build_step(cfg, method, wl, zo)
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
            "attention_kernel": attention_kernel(cfg, wl),
            "ops": tracker.n_ops,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
