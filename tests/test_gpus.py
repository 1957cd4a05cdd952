"""Budgets and the fit rule, the host's memory, and the size units of every printed number."""

from __future__ import annotations

import pytest

from memplan.breakdown import fmt_bytes, parse_unit, pick_unit
from memplan.errors import MemplanError
from memplan.gpus import Budget, budget_for, host_available_bytes, make_budget, parse_margin
from memplan.report import estimate_report, maximize_report
from memplan.workload import Workload, parse_seq, parse_seqs


def test_the_fit_rule():
    b = Budget("card", 1000, 100, 50)
    assert b.fit(850).need_bytes == 950
    assert b.fit(850).headroom_bytes == 0 and b.fit(850).fits
    assert not b.fit(851).fits
    assert b.usable_bytes == 850


def test_plan_reexports_the_budget():
    from memplan import plan

    assert plan.Budget is Budget and plan.make_budget is make_budget


def test_margins():
    assert parse_margin(None, 1000) == 20
    assert parse_margin("5%", 1000) == 50 and parse_margin("0.1", 1000) == 100
    assert parse_margin("1KB", 10**6) == 1000
    for bad in ("150%", "1", "2x", "-1GB"):
        with pytest.raises(MemplanError, match="--margin"):
            parse_margin(bad, 1000)


def test_host_budget_for_cpu():
    avail = host_available_bytes()
    assert avail > 0
    b = budget_for("cpu")
    assert b.context_bytes == 0 and b.name.startswith("host")
    assert budget_for("cpu", budget="8GB").total_bytes == 8 * 10**9
    assert budget_for("cuda", "h100").name == "h100-80g"


def test_estimate_and_maximize_agree_at_the_edge():
    """`estimate` judges the fit with the planner's rule and margin: the largest --seq the
    planner finds fits per estimate, one token more does not."""
    bud = make_budget("rtx4090")
    best = maximize_report("llama-7b", "seq", "lora", Workload(), bud, "rtx4090").best
    assert best is not None
    for seq, fits in ((best, True), (best + 1, False)):
        rep = estimate_report("llama-7b", "lora", Workload(seq=seq), bud, "rtx4090")
        assert rep.fit.fits is fits


def test_cpu_estimate_fits_against_the_host():
    bud = budget_for("cpu", budget="1GB")
    rep = estimate_report("tiny-llama", "adamw", Workload(seq=64, device="cpu"), bud)
    assert rep.fit.fits and rep.fit.need_bytes == rep.breakdown.peak  # no CUDA context
    d = rep.to_dict()
    assert d["budget"]["total_bytes"] == 10**9 and d["fit"]["fits"]


def test_rotary_models_warn_past_their_positions():
    rep = estimate_report("llama-7b", "zo-sgd", Workload(seq=4096), make_budget())
    assert len(rep.warnings) == 1 and "2048" in rep.warnings[0]
    assert estimate_report("llama-7b", "zo-sgd", Workload(seq=2048), make_budget()).warnings == []


def test_units():
    assert pick_unit(5 * 2**20) == "MiB" and pick_unit(2**30) == "GiB"
    assert pick_unit(3 * 2**40) == "TiB" and pick_unit(-5 * 2**30) == "GiB"
    assert pick_unit(2 * 10**9, decimal=True) == "GB"
    assert fmt_bytes(1536 * 2**20) == "1.50 GiB"
    assert fmt_bytes(9.5 * 2**20) == "9.50 MiB"
    assert fmt_bytes(24 * 10**9, "GB") == "24.00 GB"
    assert parse_unit("gib") == "GiB" and parse_unit("auto") is None and parse_unit(None) is None
    with pytest.raises(MemplanError, match="--unit"):
        parse_unit("parsec")


def test_seq_parsing():
    assert parse_seqs("128, 256,512") == [128, 256, 512]
    assert parse_seq("512") == 512
    for bad, needle in (
        ("64,,128", "empty item"),
        ("0", "positive"),
        ("64,64", "twice"),
        ("12,x", "integers"),
        ("", "at least one"),
    ):
        with pytest.raises(MemplanError, match=needle):
            parse_seqs(bad)
    with pytest.raises(MemplanError, match="memplan profile"):
        parse_seq("256,512")
    with pytest.raises(MemplanError, match="integer"):
        parse_seq("1e9")
