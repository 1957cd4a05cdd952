"""Bad input through the installed `memplan` entry point: one line on stderr, exit 2, no
traceback (typer 0.29 raises its bundled click's exceptions; the entry point renders them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "bare": [],
    "missing-model": ["estimate"],
    "unknown-flag": ["estimate", "llama-7b", "--bogus"],
    "float-for-int": ["estimate", "llama-7b", "--seq", "1e9"],
    "list-for-int": ["estimate", "llama-7b", "--seq", "256,512"],
    "non-numeric-batch": ["estimate", "llama-7b", "--batch", "two"],
    "zero-batch": ["estimate", "llama-7b", "--batch", "0"],
    "negative-seq": ["estimate", "llama-7b", "--seq", "-5"],
    "unknown-model": ["estimate", "llama-8b-nope"],
    "unknown-method": ["estimate", "llama-7b", "--method", "adamz"],
    "unknown-gpu": ["estimate", "llama-7b", "--gpu", "rtx9090"],
    "bad-dtype": ["estimate", "llama-7b", "--dtype", "fp8"],
    "bad-attn": ["estimate", "llama-7b", "--attn", "flash3"],
    "bad-device": ["estimate", "llama-7b", "--device", "tpu"],
    "layerwise-with-adamw": ["estimate", "llama-7b", "--layerwise"],
    "rank-with-fo-sgd": ["estimate", "llama-7b", "--method", "fo-sgd", "--rank", "8"],
    "zo-layers-with-adamw": ["estimate", "llama-7b", "--zo-layers", "3"],
    "impl-with-adamw": ["estimate", "llama-7b", "--impl", "fused"],
    "optimizer-impl-with-zo": [
        "estimate",
        "llama-7b",
        "--method",
        "zo-sgd",
        "--optimizer-impl",
        "fused",
    ],
    "hybrid-without-split": ["estimate", "llama-7b", "--method", "hybrid"],
    "split-beyond-depth": ["estimate", "llama-7b", "--method", "hybrid", "--zo-layers", "99"],
    "rank-too-large": ["estimate", "tiny-llama", "--method", "galore", "--rank", "4096"],
    "plan-unknown-gpu": ["plan", "llama-7b", "--gpu", "nope"],
    "plan-bad-margin": ["plan", "llama-7b", "--margin", "150%"],
    "profile-missing-plan-file": ["profile", "llama-7b", "--plan", "no-such-plan.json"],
    "unknown-command": ["estimat", "llama-7b"],
}


def _memplan() -> str:
    exe = Path(sys.executable).with_name("memplan")
    return str(exe) if exe.exists() else shutil.which("memplan")


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2(args):
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([_memplan(), *args], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.stdout + r.stderr
