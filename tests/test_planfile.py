"""Reading a plan file back: the recommended split, and files that are not plans."""

from __future__ import annotations

import json

import pytest

from memplan.errors import MemplanError
from memplan.gpus import make_budget
from memplan.plan import plan
from memplan.planfile import read_plan
from memplan.workload import Workload


def test_a_written_plan_reads_back(tmp_path):
    p = plan("tiny-llama", Workload(seq=64, dtype="fp32"), make_budget("rtx4090"))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(p.to_dict()))
    choice = read_plan(path)
    assert choice.model == "tiny-llama" and choice.zo_layers == p.split
    wl = choice.to_workload("meta")
    assert (wl.seq, wl.dtype, wl.device) == (64, "fp32", "meta")


REC = {"zo_layers": 1, "fo": "adamw", "zo": "zo-sgd", "workload": {"seq": 64, "batch": 1}}


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{", "not valid JSON"),
        ("[]", "JSON list"),
        (json.dumps({"recommended": REC}), "lacks model"),
        (json.dumps({"model": "m"}), "lacks recommended"),
        (json.dumps({"model": "m", "recommended": None}), "recommends no split"),
        (json.dumps({"model": "m", "recommended": {"zo_layers": 1}}), "lacks recommended.fo"),
        (json.dumps({"model": "m", "recommended": REC}), "recommended.workload.dtype"),
        (
            json.dumps({"model": "m", "recommended": {**REC, "zo_layers": "1"}}),
            "has a str at recommended.zo_layers",
        ),
    ],
    ids=["invalid", "list", "no-model", "no-rec", "nothing-fit", "no-fo", "no-dtype", "str-k"],
)
def test_files_that_are_not_plans(tmp_path, content, needle):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(MemplanError, match=needle):
        read_plan(path)


def test_a_missing_plan_file(tmp_path):
    with pytest.raises(MemplanError, match="no plan file"):
        read_plan(tmp_path / "nope.json")
