"""Estimator vs the meta backend on full-size presets (issue 2 acceptance: within 2 %).

The meta backend runs the real Hugging Face model and the real torch optimizer on meta
tensors, so a 7B-13B step is simulated in seconds; these are marked slow but stay in CI.
"""

from __future__ import annotations

import pytest

from memplan.estimate import estimate
from memplan.measure.run import measure
from memplan.models import load_config
from memplan.workload import Workload

TOLERANCE = 0.02

CASES = [
    (model, seq, dtype)
    for model in ["llama-7b", "mistral-7b", "opt-13b", "roberta-large"]
    for seq in [512, 2048]
    for dtype in ["bf16", "amp"]
    if not (model == "roberta-large" and seq == 2048)  # 512 learned positions
]


@pytest.mark.slow
@pytest.mark.parametrize("model,seq,dtype", CASES, ids=[f"{m}-{s}-{d}" for m, s, d in CASES])
def test_full_size_meta(model, seq, dtype):
    cfg = load_config(model)
    wl = Workload(batch=1, seq=seq, dtype=dtype, device="meta")
    meas = measure(cfg, "adamw", wl)
    est = estimate(cfg, "adamw", wl)
    for phase in ("forward", "backward", "optimizer"):
        err = est.phases[phase].total / meas.phases[phase].total - 1
        assert abs(err) <= TOLERANCE, f"{phase}: {err:+.3%}"
    assert est.peak_phase == meas.peak_phase


@pytest.mark.slow
def test_roberta_large_long_sequence_is_refused():
    from memplan.errors import MemplanError

    with pytest.raises(MemplanError, match="max_position_embeddings"):
        estimate("roberta-large", "adamw", Workload(seq=2048))
