from __future__ import annotations

import pytest

from memplan.errors import MemplanError
from memplan.workload import Workload


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"batch": 0}, "--batch"),
        ({"batch": -2}, "--batch"),
        ({"seq": 0}, "--seq"),
        ({"dtype": "int8"}, "--dtype"),
        ({"attn": "flash3"}, "--attn"),
        ({"optimizer_impl": "fast"}, "--optimizer-impl"),
        ({"device": "tpu"}, "--device"),
    ],
)
def test_bad_workload_names_the_option(kw, needle):
    with pytest.raises(MemplanError, match=needle):
        Workload(**kw)


def test_bytes_per_element():
    assert Workload(dtype="amp").param_bytes == 4
    assert Workload(dtype="amp").act_bytes == 2
    assert Workload(dtype="bf16").param_bytes == 2
    assert Workload(dtype="fp32").act_bytes == 4
