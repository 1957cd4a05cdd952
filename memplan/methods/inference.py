"""`inference`: one no-grad forward, the loss included: the floor zeroth-order methods approach
(no state, no gradients, nothing saved for backward)."""

from __future__ import annotations

from memplan.methods.base import MethodSpec, register
from memplan.methods.replay import StepBuilder, replay_inference
from memplan.runtime.context import RunContext


def estimate_inference(b: StepBuilder) -> None:
    replay_inference(b.tape, b.setup(training=False))


def build_inference(ctx: RunContext):
    from memplan.runtime.step import run_inference_step

    return ctx.step(ctx.model(), [], run_inference_step, training=False)


SPEC = register(
    MethodSpec(
        "inference",
        "inference",
        "one no-grad forward (the loss included): the floor that ZO methods approach",
        estimate_inference,
        build_inference,
        aliases=("no-grad",),
    )
)
