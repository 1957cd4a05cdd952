"""The analytic estimator: a Breakdown from model layout + method + workload, without torch.

Phases of one training step (after a warm-up step, so optimizer state exists):
- forward: weights + optimizer state + inputs + the forward program's live set
  (memplan.activations), peaking at the loss where logits, their fp32 copy and the
  log-softmax output meet the saved activations of every layer;
- backward: the tape's reverse walk: saved activations released node by node while
  gradients of every parameter accumulate;
- optimizer: weights + gradients + state + the optimizer implementation's step temporaries
  (memplan.methods.fo).
The peak is the largest phase total, never a sum of per-category maxima. On CUDA two named
runtime terms are added to the peak (cuBLAS workspace, 512-byte allocator rounding) and the
GPU preset's CUDA context is reported apart.

Known limitations: see memplan.activations and memplan.tape; allocator fragmentation and the
caching allocator's reserved-but-free memory are not estimated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from memplan.activations import PROGRAMS, Program, attention_kernel
from memplan.breakdown import PHASES, Breakdown
from memplan.errors import MemplanError
from memplan.methods import MethodSpec, get_method, require_available
from memplan.methods.fo import OptimizerMemory, fo_memory
from memplan.methods.forward_grad import estimate_step as _estimate_forward_grad
from memplan.methods.galore import estimate_step as _estimate_galore
from memplan.methods.hybrid import estimate_step as _estimate_hybrid
from memplan.methods.zo import ZOMemory, ZOSettings, resolve_impl, zo_memory
from memplan.models import ModelConfig, load_config
from memplan.models.layout import ParamSpec, layout
from memplan.tape import Tape, Tensor, param
from memplan.workload import WORKLOAD_FIELDS, Workload

ALLOC_ROUND = 512  # c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize, every block a multiple
# cuBLAS workspace that torch allocates through the caching allocator for the first matmul
# (aten/src/ATen/cuda/CublasHandlePool.cpp, getChosenWorkspaceSize: ":4096:2:16:8" by default,
# i.e. 4096 KiB * 2 + 16 KiB * 8 = 8.125 MiB; 32 MiB on sm90+ GPUs such as the H100).
CUBLAS_WORKSPACE = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_SM90 = 32 * 1024 * 1024
SM90_GPUS = ("h100-80g", "h200")


def buffer_bytes(cfg: ModelConfig) -> int:
    """Registered buffers of the HF model (fp32/int64 regardless of the weight dtype)."""
    if cfg.family == "llama":
        return 2 * (cfg.head_dim // 2) * 4  # rotary inv_freq + original_inv_freq, fp32
    if cfg.family == "roberta":
        return 2 * cfg.max_position_embeddings * 8  # position_ids + token_type_ids, int64
    return 0


def max_sequence(cfg: ModelConfig) -> int | None:
    """Longest sequence a model with learned positions accepts (None: rotary, no hard limit).
    OPT offsets positions by 2 inside an embedding of max_position_embeddings + 2 rows;
    RoBERTa's positions start at padding_idx + 1 = 2 inside max_position_embeddings rows."""
    if cfg.family == "opt":
        return cfg.max_position_embeddings
    if cfg.family == "roberta":
        return cfg.max_position_embeddings - 2
    return None


def check_sequence(cfg: ModelConfig, seq: int) -> None:
    limit = max_sequence(cfg)
    if limit is not None and seq > limit:
        raise MemplanError(
            f"{cfg.name} has learned positions for at most {limit} tokens "
            f"(max_position_embeddings {cfg.max_position_embeddings}); use --seq {limit} or less"
        )


def estimate(
    model: str | ModelConfig,
    method: str = "adamw",
    workload: Workload | None = None,
    gpu: str | None = None,
    zo: ZOSettings | None = None,
    **options: Any,
) -> Breakdown:
    """Estimate one training step's memory. `model` is a preset name, a path or a config;
    `zo` holds the knobs of zeroth-order methods (ignored by first-order ones); `options`
    holds other families' settings by family name (e.g. `galore=GaLoreSettings(...)`)."""
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload()
    spec = require_available(get_method(method))
    check_sequence(cfg, wl.seq)
    if cfg.family not in PROGRAMS:
        raise MemplanError(
            f"no activation model for family '{cfg.family}' yet; supported: {', '.join(PROGRAMS)}"
        )
    opts = {"zo": zo or ZOSettings(), **{k: v for k, v in options.items() if v is not None}}
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
            from memplan.gpus import get_gpu

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


def _everything(_name: str) -> bool:
    return True


@dataclass
class StepBuilder:
    """What a method's estimate function gets: the model, workload and options, and `setup`,
    which puts the weights, the inputs and the forward program on a fresh tape.

    A method family registers `fn(builder) -> None` in `STEPS`; `fn` calls `setup` with its
    trainable set (and any extra parameters, e.g. adapters), then replays its step's phases on
    `builder.tape` (see `fo_step`, `zo_step`)."""

    cfg: ModelConfig
    spec: MethodSpec
    wl: Workload
    options: dict[str, Any]
    round_to: int = 1
    tape: Tape = field(init=False)
    params: dict[str, Tensor] = field(init=False, default_factory=dict)
    specs: list[ParamSpec] = field(init=False, default_factory=list)
    info: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.tape = Tape(round_to=self.round_to, layer_tags=bool(self.options.get("phase_tags")))

    @property
    def elem(self) -> int:
        return self.wl.param_bytes

    def setup(
        self,
        trainable: Callable[[str], bool] = _everything,
        extra: Sequence[ParamSpec] = (),
        program: type[Program] | None = None,
        **program_kw: Any,
    ) -> Program:
        """Weights (the model's and `extra`, all in the parameter dtype), the inputs, and the
        family's forward program over parameters whose `requires_grad` is `trainable(name)`."""
        lay = layout(self.cfg)
        tape, elem = self.tape, self.elem
        self.specs = [*lay.params, *extra]
        self.params = {
            p.name: param(p.numel, elem, p.name, requires_grad=trainable(p.name))
            for p in self.specs
        }
        tape.base["weights"] = sum(tape.size(p.numel * elem) for p in self.specs)
        tape.base["weights"] += buffer_bytes(self.cfg)
        tape.base["temporaries"] = tape.size(self.wl.tokens * 8)  # input ids (also the labels)
        cls = program or PROGRAMS[self.cfg.family]
        prog = cls(tape, self.cfg, self.wl, self.params, **program_kw)
        self.info.setdefault("attention_kernel", prog.kern.attention)
        return prog

    def trainable_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameters that require grad, in parameter order."""
        return [p.shape for p in self.specs if self.params[p.name].requires_grad]


def _run(
    cfg: ModelConfig, spec: MethodSpec, wl: Workload, options: dict[str, Any], round_to: int
) -> Breakdown:
    b = StepBuilder(cfg, spec, wl, options, round_to)
    step = STEPS.get(spec.name, STEPS.get(spec.family))  # a method's own model first
    if step is None:
        raise MemplanError(f"method '{spec.name}' has no memory model yet")
    step(b)
    tagged = options.get("phase_tags")  # the planner keeps a split's ZO-part phases apart
    phases = {
        k: v
        for k, v in b.tape.peaks.items()
        if k in PHASES or (tagged and k.removeprefix("zo-").split("#")[0] in PHASES)
    }
    info = {"params": layout(cfg).n_params, **b.info}
    return Breakdown(source="estimate", phases=phases, info=info)


def fo_step(tape: Tape, program: Program, opt: OptimizerMemory) -> None:
    """Forward, backward, one optimizer step (state created lazily at the warm-up step)."""
    tape.base["optimizer_state"] = opt.state_bytes
    tape.set_phase("forward")
    loss = program.forward()
    tape.set_phase("backward")
    tape.backward(loss)
    tape.set_phase("optimizer")
    tape.transient(opt.step_temp_bytes)
    tape.free_param_grads()


def inference_forward(tape: Tape, program: Program) -> None:
    """One forward under torch.no_grad (the loss included): nothing is saved for backward."""
    tape.set_phase("forward")
    with tape.no_grad():
        program.forward().drop()


def zo_step(tape: Tape, program: Program, zm: ZOMemory) -> None:
    """Perturb (one tensor's temporaries at a time), no-grad forwards, update."""
    tape.base["optimizer_state"] = zm.state_bytes
    tape.set_phase("perturbation")
    tape.transient(zm.perturb_temp_bytes)
    inference_forward(tape, program)
    tape.set_phase("optimizer")
    buf = tape.alloc(zm.grad_buffer_bytes, cat="gradients")
    tape.transient(zm.update_temp_bytes)
    buf.drop()


def _estimate_fo(b: StepBuilder) -> None:
    program = b.setup()
    fo_step(
        b.tape, program, fo_memory(b.spec.name, b.trainable_shapes(), b.elem, b.wl.optimizer_impl)
    )


def _estimate_zo(b: StepBuilder) -> None:
    program = b.setup(training=False)  # MeZO's forwards: model.eval(), no dropout
    zs = b.options["zo"]
    zs = replace(zs, impl=resolve_impl(zs.impl, b.wl.device))
    b.info["zo_impl"] = zs.impl
    zo_step(b.tape, program, zo_memory(b.spec.name, b.trainable_shapes(), b.elem, zs))


def _estimate_peft(b: StepBuilder) -> None:
    from memplan.methods.peft import estimate_step

    estimate_step(b)


def _estimate_inference(b: StepBuilder) -> None:
    inference_forward(b.tape, b.setup(training=False))


# method name or family -> its estimate function (the name wins)
STEPS: dict[str, Callable[[StepBuilder], None]] = {
    "fo": _estimate_fo,
    "zo": _estimate_zo,
    "forward-grad": _estimate_forward_grad,
    "hybrid": _estimate_hybrid,
    "inference": _estimate_inference,
    "peft": _estimate_peft,  # lora, prefix, prompt (memplan.methods.peft)
    "galore": _estimate_galore,
}
