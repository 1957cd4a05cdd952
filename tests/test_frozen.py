"""Frozen parameters: the estimator's trainable set against the cpu backend.

PEFT freezes the base model, the hybrid ZO/FO split freezes the shallow layers for the FO part:
both rest on the tape knowing what a frozen weight changes (a frozen linear keeps no input;
autocast does not cache a frozen weight's cast; transformers makes the input embeddings
require grad under checkpointing). This registers a test-only method that trains layers
>= K plus the final norm and head, and checks the estimate against the measured step.
"""

from __future__ import annotations

import itertools
import re

import pytest

from memplan import estimate as est_mod
from memplan.measure import run as run_mod
from memplan.methods import MethodSpec, register, unregister
from memplan.methods.fo import fo_memory, make_optimizer
from memplan.methods.replay import replay_fo_step
from memplan.models import load_config
from memplan.workload import Workload

TOLERANCE = 0.01  # measured worst case 0.14 % (tiny-roberta, checkpointing, K = 2)
TINY = ["tiny-llama", "tiny-opt", "tiny-roberta"]


def _deep(k: int):
    def trainable(name: str) -> bool:
        m = re.search(r"\.(layers|layer)\.(\d+)\.", name)
        if m:
            return int(m.group(2)) >= k
        return "embed" not in name

    return trainable


@pytest.fixture
def frozen_method():
    """Register `frozen-K` (AdamW on layers >= K, final norm and head) for one test."""
    state = {"k": 0}

    def estimate_step(b):
        prog = b.setup(trainable=_deep(state["k"]))
        opt = fo_memory("adamw", b.trainable_shapes(), b.elem, b.wl.optimizer_impl)
        replay_fo_step(b.tape, prog, opt)

    def build(ctx):
        model = ctx.model(trainable=_deep(state["k"]))
        params = [p for p in model.parameters() if p.requires_grad]
        return ctx.step(model, [make_optimizer("adamw", params, ctx.wl.optimizer_impl)])

    register(MethodSpec("frozen", "fo", "test: AdamW on layers >= K", estimate_step, build))
    yield state
    unregister("frozen")


CASES = list(itertools.product(TINY, ["fp32", "bf16", "amp"], ["eager", "sdpa"], [False, True]))


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("model,dtype,attn,ckpt", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_frozen_prefix_estimate_vs_cpu(frozen_method, k, model, dtype, attn, ckpt):
    frozen_method["k"] = k
    cfg = load_config(model)
    wl = Workload(batch=2, seq=64, dtype=dtype, attn=attn, checkpointing=ckpt, device="cpu")
    meas = run_mod.measure(cfg, "frozen", wl)
    est = est_mod.estimate(cfg, "frozen", wl)
    for phase in ("forward", "backward", "optimizer"):
        err = est.phases[phase].total / meas.phases[phase].total - 1
        assert abs(err) <= TOLERANCE, (phase, est.phases[phase].total, meas.phases[phase].total)
