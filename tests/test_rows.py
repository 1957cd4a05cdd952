"""The sweep row schema: a round trip through the file, keys, and rows that are refused."""

from __future__ import annotations

import json

import pytest

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.methods.zo import ZOSettings
from memplan.rows import (
    RowWriter,
    oom_row,
    point_key,
    profile_row,
    read_rows,
    row_key,
    settings_dict,
    validate_row,
)
from memplan.workload import WORKLOAD_FIELDS, Workload


def _row(seq: int, q: int = 1) -> dict:
    opts = {"zo": ZOSettings(q=q)}
    est = estimate("tiny-llama", "zo-sgd", Workload(seq=seq, device="cpu"), **opts)
    meas = estimate("tiny-llama", "zo-sgd", Workload(seq=seq, device="cpu"), **opts)
    meas.source = "cpu"
    return profile_row(est, meas, settings_dict(opts))


def test_round_trip_keeps_rows_and_keys(tmp_path):
    path = tmp_path / "run.jsonl"
    rows = [_row(32), _row(64), _row(64, q=2)]
    with RowWriter(path) as w:
        for r in rows:
            w.write(r)
    back = read_rows(path)
    assert back == json.loads(json.dumps(rows))
    keys = [row_key(r) for r in back]
    assert len(set(keys)) == 3  # seq and the ZO settings are both part of the key
    wl = {k: back[0]["workload"][k] for k in WORKLOAD_FIELDS}
    assert keys[0] == point_key("tiny-llama", "zo-sgd", wl, back[0]["settings"])


def test_oom_row_is_a_row():
    est = estimate("tiny-llama", "adamw", Workload(seq=32, device="cuda"))
    row = validate_row(oom_row(est, "OutOfMemoryError: CUDA out of memory.\nmore", {}))
    assert row["error"] == "out of memory"
    assert row["error_detail"] == "OutOfMemoryError: CUDA out of memory."
    assert row_key(row) is not None


@pytest.mark.parametrize(
    "row, needle",
    [
        ([], "not a row object"),
        ({"estimate": {}}, "'seq'"),
        ({"seq": 0, "estimate": {}}, "'seq'"),
        ({"seq": 8}, "lacks 'estimate'"),
        ({"seq": 8, "estimate": {"info": {}}}, "estimate.peak_bytes"),
        ({"seq": 8, "estimate": {"peak_bytes": 1, "info": {}}}, "lacks 'measured'"),
        (
            {
                "seq": 8,
                "estimate": {"peak_bytes": 1, "info": {}},
                "measured": {"peak_bytes": 1, "info": {}},
            },
            "measured.source",
        ),
    ],
    ids=["list", "no-seq", "zero-seq", "no-estimate", "no-peak", "no-measured", "no-source"],
)
def test_rows_missing_fields_are_refused(row, needle):
    with pytest.raises(MemplanError, match=needle.replace(".", r"\.")):
        validate_row(row, "run.jsonl:1")


def test_files_that_are_not_sweeps(tmp_path):
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(MemplanError, match="not a text file"):
        read_rows(binary)
    with pytest.raises(MemplanError, match="is a folder"):
        read_rows(tmp_path)
    assert read_rows(tmp_path / "new.jsonl", allow_empty=True) == []


def test_a_cut_last_line_is_skipped_then_replaced(tmp_path):
    path = tmp_path / "run.jsonl"
    whole = json.dumps(_row(32))
    path.write_text(whole + "\n" + whole[:50])  # a writer killed mid-line
    assert len(read_rows(path)) == 1
    with RowWriter(path) as w:
        w.write(_row(48))
    assert [r["seq"] for r in read_rows(path)] == [32, 48]
    assert path.read_text().count("\n") == 2


def test_a_whole_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(_row(32)))  # edited by hand: no final newline
    with RowWriter(path) as w:
        w.write(_row(48))
    assert [r["seq"] for r in read_rows(path)] == [32, 48]
