"""fo-sgd-nesterov, the worked example of docs/contributing.md: a first-order optimizer added
through the method registry alone. Its estimate against the cpu backend (every phase) and its
state against torch's own after a step."""

from __future__ import annotations

import itertools

import pytest

from memplan.estimate import estimate
from memplan.measure.run import build_step, measure
from memplan.methods import get_method
from memplan.models import load_config
from memplan.workload import Workload

TINY = ["tiny-llama", "tiny-mistral", "tiny-opt", "tiny-roberta"]
TOLERANCE = 0.01  # per phase, against the cpu backend (measured worst case: see the test ids)
CASES = list(itertools.product(TINY, ["foreach", "forloop", "fused"], ["fp32", "bf16"]))


def test_registered_as_first_order():
    spec = get_method("nesterov")
    assert (spec.name, spec.kind, spec.knobs) == ("fo-sgd-nesterov", "fo", ("optimizer_impl",))


@pytest.mark.parametrize("model,impl,dtype", CASES, ids=["-".join(c) for c in CASES])
def test_estimate_vs_cpu(model, impl, dtype):
    cfg = load_config(model)
    wl = Workload(batch=2, seq=64, dtype=dtype, optimizer_impl=impl, device="cpu")
    meas = measure(cfg, "fo-sgd-nesterov", wl)
    est = estimate(cfg, "fo-sgd-nesterov", wl)
    for phase in ("forward", "backward", "optimizer"):
        e, m = est.phases[phase].total, meas.phases[phase].total
        assert abs(e / m - 1) <= TOLERANCE, (phase, e, m)
    # the momentum buffers, exactly
    opt_e, opt_m = est.phases["optimizer"], meas.phases["optimizer"]
    assert opt_e.categories["optimizer_state"] == opt_m.categories["optimizer_state"]
    assert opt_e.categories["temporaries"] == opt_m.categories["temporaries"]


def test_state_is_torchs_momentum_buffers():
    cfg = load_config("tiny-llama")
    wl = Workload(batch=1, seq=16, dtype="fp32", device="cpu")
    step = build_step(cfg, "fo-sgd-nesterov", wl)
    step(lambda _phase: None)
    (opt,) = step.optimizers
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    kept = sum(t.nbytes for s in opt.state.values() for t in s.values())
    est = estimate(cfg, "fo-sgd-nesterov", wl)
    assert kept == est.phases["optimizer"].categories["optimizer_state"]
