"""The analytic estimator: a Breakdown from model layout + method + workload, without torch.

Phases of one training step (after a warm-up step, so optimizer state exists):
- forward: weights + optimizer state + inputs + the forward program's live set
  (memplan.activations), peaking at the loss where logits, their fp32 copy and the
  log-softmax output meet the saved activations of every layer;
- backward: the tape's reverse walk: saved activations released node by node while
  gradients of every parameter accumulate;
- optimizer: weights + gradients + state + the optimizer implementation's step temporaries
  (the method's own model, memplan.methods).
The peak is the largest phase total, never a sum of per-category maxima. On CUDA two named
runtime terms are added to the peak (cuBLAS workspace, 512-byte allocator rounding) and the
GPU preset's CUDA context is reported apart.

The method's registry entry (`memplan.methods.base.MethodSpec.estimate`) replays the step; this
module only dispatches and adds the device's runtime terms. Known limitations: see
memplan.activations and memplan.tape; allocator fragmentation and the
caching allocator's reserved-but-free memory are not estimated.
"""

from __future__ import annotations

from typing import Any

from memplan.breakdown import PHASES, Breakdown
from memplan.gpus import get_gpu
from memplan.methods import default_options, get_method, load_plugins
from memplan.methods.base import MethodSpec
from memplan.methods.replay import StepBuilder
from memplan.methods.zo import ZOSettings
from memplan.models import ModelConfig, check_sequence, layout, load_config
from memplan.programs import attention_kernel, program_for
from memplan.workload import WORKLOAD_FIELDS, Workload

ALLOC_ROUND = 512  # c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize, every block a multiple
# cuBLAS workspace that torch allocates through the caching allocator for the first matmul
# (aten/src/ATen/cuda/CublasHandlePool.cpp, getChosenWorkspaceSize: ":4096:2:16:8" by default,
# i.e. 4096 KiB * 2 + 16 KiB * 8 = 8.125 MiB; 32 MiB on sm90+ GPUs such as the H100).
CUBLAS_WORKSPACE = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_SM90 = 32 * 1024 * 1024
SM90_GPUS = ("h100-80g", "h200")


def estimate(
    model: str | ModelConfig,
    method: str = "adamw",
    workload: Workload | None = None,
    gpu: str | None = None,
    zo: ZOSettings | None = None,
    **options: Any,
) -> Breakdown:
    """Estimate one training step's memory. `model` is a preset name, a path or a config;
    `options` holds the methods' settings by group key (`zo=ZOSettings(...)`,
    `galore=GaLoreSettings(...)`, `peft=...`, `hybrid=...`; memplan.methods.settings_groups);
    a group left out takes its defaults."""
    load_plugins()
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload()
    spec = get_method(method)
    check_sequence(cfg, wl.seq)
    program_for(cfg)  # a family without a program is refused before anything runs
    opts = default_options({"zo": zo, **options})
    bd = _run(cfg, spec, wl, opts, round_to=1)
    if wl.device == "cuda":
        rounded = _run(cfg, spec, wl, opts, round_to=ALLOC_ROUND)
        gpu_name = gpu or "rtx4090"
        bd.runtime = {
            "cublas_workspace": CUBLAS_WORKSPACE_SM90
            if gpu_name in SM90_GPUS
            else CUBLAS_WORKSPACE,
            "allocator_rounding": rounded.tensor_peak - bd.tensor_peak,
        }
        if gpu is not None:
            bd.context_bytes = get_gpu(gpu).context_bytes
    bd.info.setdefault("attention_kernel", attention_kernel(cfg, wl))
    bd.info.update(
        model=cfg.name,
        family=cfg.family,
        method=spec.name,
        gpu=gpu,
        **{k: getattr(wl, k) for k in WORKLOAD_FIELDS},
    )
    return bd


def _run(
    cfg: ModelConfig, spec: MethodSpec, wl: Workload, options: dict[str, Any], round_to: int
) -> Breakdown:
    b = StepBuilder(cfg, spec, wl, options, round_to)
    spec.estimate(b)
    tagged = options.get("phase_tags")  # the planner keeps a split's ZO-part phases apart
    phases = {
        k: v
        for k, v in b.tape.peaks.items()
        if k in PHASES or (tagged and k.removeprefix("zo-").split("#")[0] in PHASES)
    }
    info = {"params": layout(cfg).n_params, **b.info}
    return Breakdown(source="estimate", phases=phases, info=info)
