"""A method registered in one module of its own (tests/plugins/toy_method.py), touching no
other file: estimate, profile, plan and every CLI command see it."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memplan.estimate import estimate
from memplan.measure.run import measure
from memplan.methods import get_method, unregister
from memplan.methods.base import unregister_settings
from memplan.plan import make_budget, plan
from memplan.workload import Workload

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def toy():
    sys.path.insert(0, str(PLUGINS))
    try:
        yield importlib.import_module("toy_method").SPEC
    finally:
        unregister("toy-sgd")
        unregister_settings("toy")
        sys.modules.pop("toy_method", None)
        sys.path.remove(str(PLUGINS))


def test_estimate_and_measure_see_it(toy):
    assert get_method("toy") is toy
    wl = Workload(batch=2, seq=32, dtype="fp32", device="cpu")
    est = estimate("tiny-llama", "toy", wl)
    meas = measure("tiny-llama", "toy", wl)
    assert est.info["method"] == meas.info["method"] == "toy-sgd"
    # torch SGD without momentum keeps no state and steps in place: the toy's model is exact
    for phase in ("forward", "backward", "optimizer"):
        e, m = est.phases[phase].total, meas.phases[phase].total
        assert abs(e / m - 1) < 0.01, (phase, e, m)


def test_its_own_knob_reaches_estimate_and_measure(toy):
    """The toy's settings group (one Knob declared in its module): momentum keeps a buffer the
    size of the trainable parameters, in the estimate and in the real step alike."""
    wl = Workload(batch=2, seq=32, dtype="fp32", device="cpu")
    opts = {"toy": toy_settings(momentum=0.9)}
    plain = estimate("tiny-llama", "toy", wl)
    est = estimate("tiny-llama", "toy", wl, **opts)
    meas = measure("tiny-llama", "toy", wl, **opts)
    params = est.info["toy_params"] * 4
    assert est.phases["optimizer"].categories["optimizer_state"] == params
    assert plain.phases["optimizer"].categories["optimizer_state"] == 0
    e, m = est.phases["optimizer"].total, meas.phases["optimizer"].total
    assert abs(e / m - 1) < 0.01, (e, m)
    assert meas.phases["optimizer"].categories["optimizer_state"] == params


def toy_settings(**kw):
    return importlib.import_module("toy_method").ToySettings(**kw)


def test_the_planner_ranks_it(toy):
    p = plan("llama-7b", Workload(seq=512), make_budget("a100-80g"))
    labels = [r.option.label for r in p.rows]
    assert "toy-sgd" in labels and "toy-sgd + checkpointing" not in labels
    # within its tier (full first-order), after the built-in rows of lower order
    assert labels.index("toy-sgd") > labels.index("fo-sgd")


def _memplan() -> str:
    exe = Path(sys.executable).with_name("memplan")
    return str(exe) if exe.exists() else shutil.which("memplan")


@pytest.mark.parametrize(
    "args,expect",
    [
        (["methods"], "toy-sgd"),
        (["estimate", "tiny-llama", "--method", "toy"], "toy-sgd"),
        (["estimate", "tiny-llama", "--method", "toy", "--json"], '"method": "toy-sgd"'),
        (
            ["profile", "tiny-llama", "--method", "toy", "--device", "cpu", "--seq", "32"],
            "toy-sgd",
        ),
        (["plan", "llama-7b", "--gpu", "a100-80g"], "toy-sgd"),
        (["plan", "llama-7b", "--maximize", "seq", "--method", "toy"], "toy"),
        (["plot", "tiny-llama", "--method", "toy,adamw", "--seq", "32,64", "-o", "{tmp}"], "wrote"),
        (["profile", "--help"], "--toy-momentum"),
        (["plan", "llama-7b", "--maximize", "seq", "-m", "toy", "--toy-momentum", "0.9"], "toy"),
        (["plot", "tiny-llama", "-m", "toy", "--toy-momentum", "0.9", "-o", "{tmp}"], "wrote"),
    ],
    ids=[
        "methods",
        "estimate",
        "estimate-json",
        "profile",
        "plan",
        "maximize",
        "plot",
        "knob-profile-help",
        "knob-maximize",
        "knob-plot",
    ],
)
def test_every_cli_command_sees_it(tmp_path, args, expect):
    env = {
        **os.environ,
        "MEMPLAN_PLUGINS": "toy_method",
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
    }
    args = [a.replace("{tmp}", str(tmp_path / "toy.png")) for a in args]
    r = subprocess.run([_memplan(), *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout, r.stdout[-2000:]


def test_its_knob_on_the_command_line():
    """`--toy-momentum` sets the toy's state (a bf16 buffer per trainable parameter); on
    another method it is one line naming the methods it applies to."""
    env = {
        **os.environ,
        "MEMPLAN_PLUGINS": "toy_method",
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["estimate", "tiny-llama", "--method", "toy", "--toy-momentum", "0.9", "--json"]
    r = subprocess.run([_memplan(), *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    bd = json.loads(r.stdout)
    state = bd["phases"]["optimizer"]["optimizer_state"]
    assert state == 2 * bd["info"]["toy_params"] > 0
    args = ["estimate", "tiny-llama", "--method", "adamw", "--toy-momentum", "0.9"]
    r = subprocess.run([_memplan(), *args], capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(
        "error: --toy-momentum does not apply to --method adamw; it applies to toy-sgd"
    )


def test_a_plugin_that_cannot_be_imported_is_one_line():
    env = {**os.environ, "MEMPLAN_PLUGINS": "no_such_plugin_module"}
    r = subprocess.run([_memplan(), "models"], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "MEMPLAN_PLUGINS" in r.stderr
    assert "Traceback" not in r.stderr
