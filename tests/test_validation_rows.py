"""Refactors keep every number: rows of docs/validation/*.jsonl regenerate to the byte with the
current code (benchmarks/regen_validation.py does every row; `--measured` re-runs the steps).

Here: every cpu/meta/plan row's estimate part (pure Python, seconds in all), and the measured
part of a few tiny cpu rows (a real CPU step each)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "regen_validation", ROOT / "benchmarks" / "regen_validation.py"
)
regen = importlib.util.module_from_spec(_spec)
sys.modules["regen_validation"] = regen
_spec.loader.exec_module(regen)

VALIDATION = ROOT / "docs" / "validation"


def _rows(name: str):
    return regen.read_rows(VALIDATION / name)


ESTIMATE_ROWS = [
    pytest.param(name, n, line, row, id=f"{name}:{n}:{regen.kind_of(row).label(row)}")
    for name in ("cpu.jsonl", "meta.jsonl", "plan-meta.jsonl")
    for n, line, row in _rows(name)
]
# one tiny cpu row per model and dtype, measured again (about a second each)
MEASURED_ROWS = [
    pytest.param(n, line, row, id=f"cpu.jsonl:{n}:{regen.kind_of(row).label(row)}")
    for n, line, row in _rows("cpu.jsonl")
    if row["estimate"]["info"]["method"] == "fo-sgd" and row["seq"] == 64
][::3]


@pytest.mark.parametrize("name,n,line,row", ESTIMATE_ROWS)
def test_estimate_part_regenerates_to_the_byte(name, n, line, row):
    res = regen.check_row(row, n, measured=False)
    assert res.equal, res.describe()


@pytest.mark.parametrize("n,line,row", MEASURED_ROWS)
def test_measured_part_regenerates_to_the_byte(n, line, row):
    res = regen.check_row(row, n, measured=True, line=line)
    assert res.equal, res.describe()
