"""What every model family's tests check the same way (tests/test_families.py and
tests/test_family_*.py): the method grid on the tiny configs, the per-phase comparison of the
estimate with the measured step, and the options every CPU method runs with."""

from __future__ import annotations

from memplan.estimate import estimate
from memplan.measure.run import measure
from memplan.methods import methods
from memplan.methods.galore import GaLoreSettings
from memplan.methods.hybrid import HybridSettings
from memplan.methods.zo import ZOSettings

ZO = ZOSettings(impl="chunked", chunk_elems=4096)
# issue 10's grid on the tiny configs: each phase within 2 % (batch 2, seq 64/256, fp32/bf16)
METHODS = [
    ("adamw", {}),
    ("fo-sgd", {}),
    ("zo-sgd", {"zo": ZO}),
    ("lora", {}),
    ("galore", {"galore": GaLoreSettings(rank=8, step_kind="ordinary")}),
    ("galore", {"galore": GaLoreSettings(rank=8, step_kind="refresh")}),
]
METHOD_IDS = ["adamw", "fo-sgd", "zo-sgd", "lora", "galore-ordinary", "galore-refresh"]
CPU_METHODS = [m.name for m in methods() if "cpu" in m.devices]


def every_method_options() -> dict:
    """Settings every CPU method can run with on a tiny config (the split at K = 1)."""
    return {
        "zo": ZO,
        "galore": GaLoreSettings(rank=8, step_kind="ordinary"),
        "hybrid": HybridSettings(zo_layers=1),
    }


def phases_agree(cfg, method, wl, opts, tolerance):
    """The estimate and the measured step have the same phases, each phase's peak within
    `tolerance`, and peak in the same phase."""
    meas = measure(cfg, method, wl, **opts)
    est = estimate(cfg, method, wl, **opts)
    assert set(est.phases) == set(meas.phases)
    for phase, m in meas.phases.items():
        err = est.phases[phase].total / m.total - 1
        assert abs(err) <= tolerance, (
            cfg.name,
            method,
            wl,
            phase,
            est.phases[phase].total,
            m.total,
        )
    assert est.peak_phase == meas.peak_phase


def peak_agrees(model, method, wl, opts, tolerance=0.01):
    """The estimated tensor peak within `tolerance` of the measured one."""
    meas = measure(model, method, wl, **opts)
    est = estimate(model, method, wl, **opts)
    assert abs(est.tensor_peak / meas.tensor_peak - 1) <= tolerance, (
        est.tensor_peak,
        meas.tensor_peak,
    )
