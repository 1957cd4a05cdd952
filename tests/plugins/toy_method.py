"""A toy method registered from one module of its own, touching no other file: torch SGD,
with a knob of its own (`--toy-momentum`: a momentum buffer the size of the parameters when
> 0) that every command taking method knobs offers, and a row offered to the planner. Loaded as
a plugin (`MEMPLAN_PLUGINS=toy_method`) by tests/test_registry.py."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from memplan.knobs import Knob
from memplan.methods.base import (
    Candidate,
    MethodSpec,
    SettingsGroup,
    register,
    register_settings,
)
from memplan.methods.replay import OptimizerMemory, StepBuilder, replay_fo_step


@dataclass(frozen=True)
class ToySettings:
    momentum: float = 0.0


register_settings(
    SettingsGroup(
        "toy",
        ToySettings,
        (
            Knob(
                "toy_momentum",
                float,
                ToySettings.momentum,
                "toy-sgd: momentum (a buffer the size of the parameters when > 0)",
                field="momentum",
            ),
        ),
    )
)


def estimate(b: StepBuilder) -> None:
    program = b.setup()
    numel = sum(prod(s) for s in b.trainable_shapes())
    momentum = b.options["toy"].momentum
    state = numel * b.wl.param_bytes if momentum > 0 else 0
    replay_fo_step(b.tape, program, OptimizerMemory(state, 0))
    b.info["toy_params"] = numel


def build(ctx):
    import torch

    model = ctx.model()
    params = [p for p in model.parameters() if p.requires_grad]
    momentum = ctx.options["toy"].momentum
    return ctx.step(model, [torch.optim.SGD(params, lr=1e-3, momentum=momentum, foreach=True)])


SPEC = register(
    MethodSpec(
        "toy-sgd",
        "fo",
        "a toy method registered by a plugin module (tests)",
        estimate,
        build,
        aliases=("toy",),
        settings=("toy",),
        knobs=("toy_momentum",),
        candidates=(Candidate("toy-sgd", "full first-order", "a toy row from a plugin", 9),),
    )
)
