"""Plots: curves from a profile sweep and from estimates, a truncated sweep, the image."""

from __future__ import annotations

import json

import pytest

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.plot import curves_from_estimates, curves_from_rows, load_rows, render
from memplan.rows import profile_row
from memplan.workload import Workload


def _row(model: str, method: str, seq: int, scale: float = 1.0) -> dict:
    """A sweep row whose 'measured' side is the estimate scaled by `scale`."""
    est = estimate(model, method, Workload(seq=seq, device="meta"))
    meas = estimate(model, method, Workload(seq=seq, device="meta"))
    meas.source = "meta"
    for ph in meas.phases.values():
        for c in ph.categories:
            ph.categories[c] = int(ph.categories[c] * scale)
    return profile_row(est, meas)


def test_rows_group_by_model_and_method_sorted_by_seq(tmp_path):
    rows = [_row("tiny-llama", "adamw", s, 1.01) for s in (128, 32, 64)]
    rows.append(_row("tiny-llama", "fo-sgd", 64))
    curves = curves_from_rows(rows)
    assert [len(c.seq) for c in curves] == [3, 1]
    adamw = curves[0]
    assert adamw.seq == [32, 64, 128]
    assert adamw.estimated == sorted(adamw.estimated)  # more tokens, more memory
    for e in adamw.errors:
        assert e == pytest.approx(1 / 1.01 - 1, abs=1e-5)  # int rounding per category


def test_truncated_last_line_is_skipped_and_image_written(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = [json.dumps(_row("tiny-opt", "adamw", s)) for s in (32, 64)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:40])  # an interrupted write
    curves = curves_from_rows(load_rows(path))
    assert curves[0].seq == [32, 64]
    out = render(curves, tmp_path / "fig.png", capacity=("budget", 10**7))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimate_curves_grow_with_sequence():
    (c,) = curves_from_estimates("tiny-llama", ["adamw"], [512, 64, 256])
    assert c.seq == [64, 256, 512]
    assert c.estimated[0] < c.estimated[1] < c.estimated[2]
    assert all(m is None for m in c.measured)


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(MemplanError, match="no such file"):
        load_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    with pytest.raises(MemplanError, match="bad.jsonl:1"):
        load_rows(bad)


def test_make_plot_checks_the_output_first(tmp_path):
    from memplan.plot import make_plot

    rep = make_plot("tiny-llama", tmp_path / "f.svg", ["adamw", "zo-sgd"], [32, 64])
    assert len(rep.curves) == 2 and (tmp_path / "f.svg").read_text().startswith("<?xml")
    for bad, needle in (("f.txt", "'.txt' image"), ("nodir/f.png", "does not exist")):
        with pytest.raises(MemplanError, match=needle):
            make_plot("tiny-llama", tmp_path / bad, ["adamw"], [32])


def test_rows_missing_fields_are_named(tmp_path):
    path = tmp_path / "run.jsonl"
    row = _row("tiny-opt", "adamw", 32)
    del row["measured"]["source"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(MemplanError, match="measured.source"):
        load_rows(path)
