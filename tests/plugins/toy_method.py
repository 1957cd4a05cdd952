"""A toy method registered from one module of its own, touching no other file: plain SGD
with a state buffer of half the parameters' size, offered to the planner. Loaded as a plugin
(`MEMPLAN_PLUGINS=toy_method`) by tests/test_registry.py."""

from __future__ import annotations

from math import prod

from memplan.methods.base import Candidate, MethodSpec, register
from memplan.methods.replay import OptimizerMemory, StepBuilder, replay_fo_step


def estimate(b: StepBuilder) -> None:
    program = b.setup()
    numel = sum(prod(s) for s in b.trainable_shapes())
    replay_fo_step(b.tape, program, OptimizerMemory(0, 0))
    b.info["toy_params"] = numel


def build(ctx):
    import torch

    model = ctx.model()
    params = [p for p in model.parameters() if p.requires_grad]
    return ctx.step(model, [torch.optim.SGD(params, lr=1e-3, foreach=True)])


SPEC = register(
    MethodSpec(
        "toy-sgd",
        "fo",
        "a toy method registered by a plugin module (tests)",
        estimate,
        build,
        aliases=("toy",),
        candidates=(Candidate("toy-sgd", "full first-order", "a toy row from a plugin", 9),),
    )
)
