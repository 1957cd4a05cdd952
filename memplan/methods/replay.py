"""What every method's estimate function builds on: the `StepBuilder` (weights, inputs and the
family's forward program on a fresh tape) and the step replays several methods share
(`replay_fo_step`, `replay_zo_step`, `replay_inference`). No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memplan.methods.base import MethodSpec
from memplan.models import ModelConfig, ParamSpec, buffer_bytes, layout
from memplan.programs import Program, program_for
from memplan.tape import Tape, Tensor, param
from memplan.workload import Workload


def everything(_name: str) -> bool:
    return True


@dataclass
class StepBuilder:
    """What a method's estimate function gets: the model, workload and options, and `setup`,
    which puts the weights, the inputs and the forward program on a fresh tape.

    `MethodSpec.estimate(builder)` calls `setup` with its trainable set (and any extra
    parameters, e.g. adapters), then replays its step's phases on `builder.tape` (see
    `replay_fo_step`, `replay_zo_step`)."""

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

    def fresh(self) -> StepBuilder:
        """A builder for the same step on a new tape (a method that replays several kinds of
        step keeps the worse)."""
        return StepBuilder(self.cfg, self.spec, self.wl, self.options, self.round_to)

    @property
    def elem(self) -> int:
        return self.wl.param_bytes

    def setup(
        self,
        trainable: Callable[[str], bool] = everything,
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
        cls = program or program_for(self.cfg)
        prog = cls(tape, self.cfg, self.wl, self.params, **program_kw)
        self.info.setdefault("attention_kernel", prog.kern.attention)
        return prog

    def trainable_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameters that require grad, in parameter order."""
        return [p.shape for p in self.specs if self.params[p.name].requires_grad]


@dataclass(frozen=True)
class OptimizerMemory:
    """A first-order optimizer's state (kept across steps) and its step's transient peak."""

    state_bytes: int
    step_temp_bytes: int


@dataclass(frozen=True)
class ZOMemory:
    """A zeroth-order method's state and the temporaries of its perturbation and update."""

    state_bytes: int  # kept across steps
    perturb_temp_bytes: int  # transient peak while perturbing one tensor
    update_temp_bytes: int  # transient peak while updating one tensor
    grad_buffer_bytes: int  # q > 1: the averaged estimate


def replay_fo_step(tape: Tape, program: Program, opt: OptimizerMemory) -> None:
    """Forward, backward, one optimizer step (state created lazily at the warm-up step)."""
    tape.base["optimizer_state"] = opt.state_bytes
    tape.set_phase("forward")
    loss = program.forward()
    tape.set_phase("backward")
    tape.backward(loss)
    tape.set_phase("optimizer")
    tape.transient(opt.step_temp_bytes)
    tape.free_param_grads()


def replay_inference(tape: Tape, program: Program) -> None:
    """One forward under torch.no_grad (the loss included): nothing is saved for backward."""
    tape.set_phase("forward")
    with tape.no_grad():
        program.forward().drop()


def replay_zo_step(tape: Tape, program: Program, zm: ZOMemory) -> None:
    """Perturb (one tensor's temporaries at a time), no-grad forwards, update."""
    tape.base["optimizer_state"] = zm.state_bytes
    tape.set_phase("perturbation")
    tape.transient(zm.perturb_temp_bytes)
    replay_inference(tape, program)
    tape.set_phase("optimizer")
    buf = tape.alloc(zm.grad_buffer_bytes, cat="gradients")
    tape.transient(zm.update_temp_bytes)
    buf.drop()
