"""Estimator vs the cpu backend on tiny configs of every family.

Acceptance (issue 2): for each FO optimizer, dtype, attention kernel and checkpointing setting
the estimated peak is within 3 % of the peak measured by the live-storage tracker on real CPU
tensors. The grid is the full product over family x dtype x attention x checkpointing for
AdamW, and the full product over optimizer x implementation x dtype for each family.
"""

from __future__ import annotations

import itertools

import pytest

from memplan.estimate import estimate
from memplan.measure.run import measure
from memplan.models import load_config
from memplan.workload import Workload

TINY = ["tiny-llama", "tiny-mistral", "tiny-opt", "tiny-roberta"]

TOLERANCE = 0.03  # issue 2 acceptance: 3 % on tiny configs (cpu backend)

SETTINGS = list(
    itertools.product(TINY, ["fp32", "bf16", "fp16", "amp"], ["eager", "sdpa"], [False, True])
)
OPTIMIZERS = [
    (fam, m, impl, dt)
    for fam in TINY
    for m in ["fo-sgd", "fo-sgd-mmt", "fo-adam", "adamw", "adafactor"]
    for impl in ["foreach", "forloop", "fused"]
    for dt in ["fp32", "bf16"]
    if not (m == "adafactor" and impl == "fused")
]


def _check(model: str, method: str, wl: Workload) -> None:
    cfg = load_config(model)
    meas = measure(cfg, method, wl)
    est = estimate(cfg, method, wl)
    err = est.tensor_peak / meas.tensor_peak - 1
    assert abs(err) <= TOLERANCE, (
        f"{model} {method} {wl}: estimate {est.tensor_peak} vs measured {meas.tensor_peak} "
        f"({err:+.2%}); phases est {[p.total for p in est.phases.values()]} "
        f"meas {[p.total for p in meas.phases.values()]}"
    )
    # what the optimizer keeps is exact by construction: weights, grads, state
    for cat in ("weights", "optimizer_state"):
        assert est.phases["optimizer"].categories[cat] == meas.phases["optimizer"].categories[cat]


def _setting(m, d, a, c):
    return pytest.param(m, d, a, c, id=f"{m}-{d}-{a}-{'ckpt' if c else 'full'}")


@pytest.mark.parametrize("model,dtype,attn,ckpt", [_setting(*s) for s in SETTINGS])
def test_adamw_settings(model, dtype, attn, ckpt):
    wl = Workload(batch=2, seq=64, dtype=dtype, attn=attn, checkpointing=ckpt, device="cpu")
    _check(model, "adamw", wl)


@pytest.mark.parametrize(
    "model,method,impl,dtype", OPTIMIZERS, ids=["-".join(o) for o in OPTIMIZERS]
)
def test_optimizers(model, method, impl, dtype):
    wl = Workload(batch=2, seq=64, dtype=dtype, optimizer_impl=impl, device="cpu")
    _check(model, method, wl)


@pytest.mark.parametrize("model", TINY)
def test_odd_shapes(model):
    """Batch and sequence that are not powers of two, and batch 1."""
    _check(model, "adamw", Workload(batch=3, seq=37, dtype="bf16", device="cpu"))
    _check(model, "fo-sgd", Workload(batch=1, seq=200, dtype="fp32", attn="eager", device="cpu"))
