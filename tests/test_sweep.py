"""The sweep loop with a fake measurement: OOM by exception class, Ctrl-C, reruns."""

from __future__ import annotations

import json

import pytest

from memplan.breakdown import Breakdown
from memplan.errors import MemplanError
from memplan.gpus import Budget
from memplan.measure.sweep import Point, is_oom, profile
from memplan.workload import Workload

SEQS = (16, 32, 48, 64)


def _wls(seqs=SEQS, device: str = "cpu") -> list[Workload]:
    return [Workload(seq=s, device=device, dtype="fp32") for s in seqs]


def fake_measure(fail: dict[int, BaseException] | None = None, calls: list | None = None):
    """The estimate as the measurement (source cpu); raises fail[seq] at that point."""

    def run(point: Point) -> Breakdown:
        seq = point.workload.seq
        if calls is not None:
            calls.append(seq)
        if fail and seq in fail:
            raise fail[seq]
        bd = Breakdown.from_dict(point.estimate.to_dict())
        bd.source = "cpu"
        return bd

    return run


def test_oom_is_told_by_class_not_message():
    torch = pytest.importorskip("torch")
    assert is_oom(MemoryError())
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert not is_oom(RuntimeError("CUDA out of memory"))  # a message is not a class
    assert not is_oom(ValueError("out of memory"))


def test_an_oom_point_is_a_row_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "run.jsonl"
    rep = profile(
        "tiny-llama", "fo-sgd", _wls(), {}, out=out, measure=fake_measure({32: MemoryError()})
    )
    assert not rep.interrupted and rep.measured == 4 and rep.skipped == 0
    assert [r["seq"] for r in rep.rows] == list(SEQS)
    assert rep.rows[1]["error"] == "out of memory" and "MemoryError" in rep.rows[1]["error_detail"]
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == list(SEQS)


def test_other_errors_propagate_and_keep_what_was_written(tmp_path):
    out = tmp_path / "run.jsonl"
    with pytest.raises(ValueError):
        profile(
            "tiny-llama", "fo-sgd", _wls(), {}, out=out, measure=fake_measure({48: ValueError()})
        )
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [16, 32]


def test_ctrl_c_returns_the_finished_points_and_a_rerun_skips_them(tmp_path):
    out = tmp_path / "run.jsonl"
    rep = profile(
        "tiny-llama",
        "fo-sgd",
        _wls(),
        {},
        out=out,
        measure=fake_measure({48: KeyboardInterrupt()}),
    )
    assert rep.interrupted and [r["seq"] for r in rep.rows] == [16, 32]
    calls: list[int] = []
    again = profile("tiny-llama", "fo-sgd", _wls(), {}, out=out, measure=fake_measure(calls=calls))
    assert calls == [48, 64]  # only what was missing
    assert (again.skipped, again.measured, again.interrupted) == (2, 2, False)
    assert [r["seq"] for r in again.rows] == list(SEQS)
    seqs = [json.loads(line)["seq"] for line in out.read_text().splitlines()]
    assert seqs == list(SEQS)  # no duplicates
    calls.clear()
    third = profile("tiny-llama", "fo-sgd", _wls(), {}, out=out, measure=fake_measure(calls=calls))
    assert calls == [] and third.skipped == 4


def test_other_settings_are_other_points(tmp_path):
    out = tmp_path / "run.jsonl"
    profile("tiny-llama", "fo-sgd", _wls((16,)), {}, out=out, measure=fake_measure())
    calls: list[int] = []
    wl = [Workload(seq=16, device="cpu", dtype="fp32", batch=2)]
    profile("tiny-llama", "fo-sgd", wl, {}, out=out, measure=fake_measure(calls=calls))
    assert calls == [16]


def test_the_host_check_refuses_before_measuring():
    calls: list[int] = []
    tiny = Budget("host memory available", 10**6, 0, 0)
    with pytest.raises(MemplanError, match="--force"):
        profile("tiny-llama", "adamw", _wls(), {}, host=tiny, measure=fake_measure(calls=calls))
    assert calls == []
    big = Budget("host memory available", 10**12, 0, 0)
    rep = profile("tiny-llama", "adamw", _wls(), {}, host=big, measure=fake_measure())
    assert rep.measured == 4
