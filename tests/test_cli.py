"""The command line: results, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_cli as run


def test_estimate_json_has_phases_and_fit(capsys):
    code, out, _ = run(
        capsys, "estimate", "llama-7b", "--method", "adamw", "--seq", "256", "--json"
    )
    assert code == 0
    d = json.loads(out)
    assert d["peak_phase"] in ("forward", "backward", "optimizer")
    assert d["peak_bytes"] == max(sum(p.values()) for p in d["phases"].values()) + sum(
        d["runtime"].values()
    )
    assert d["fit"]["fits"] is False  # 7B AdamW in bf16 needs > 50 GB
    assert d["info"]["attention_kernel"] == "flash"


def test_estimate_table(capsys):
    code, out, _ = run(capsys, "estimate", "tiny-llama", "--method", "sgd", "--seq", "64")
    assert code == 0
    assert "peak phase" in out and "fits" in out and "GiB" in out and "GB" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["estimate", "llama7b"], "llama-7b"),
        (["estimate", "llama-7b", "--method", "adamm"], "adamw"),
        (["estimate", "llama-7b", "--gpu", "rtx409"], "rtx4090"),
        (["estimate", "llama-7b", "--batch", "0"], "--batch"),
        (["estimate", "llama-7b", "--seq", "-5"], "--seq"),
        (["estimate", "llama-7b", "--dtype", "int4"], "--dtype"),
        (["estimate", "roberta-large", "--seq", "2048"], "512"),
        (["estimate", "llama-7b", "--method", "hybrid"], "needs the split"),
        (["profile", "tiny-llama", "--seq", "12,x"], "--seq"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_missing_config_key_is_named(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "vocab_size": 10}))
    code, _, err = run(capsys, "estimate", str(cfg))
    assert code == 2
    assert "num_attention_heads" in err or "num_hidden_layers" in err or "intermediate" in err


def test_cuda_without_gpu_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run(capsys, "profile", "tiny-llama", "--device", "cuda", "--seq", "16")
    assert code == 2
    assert "CUDA" in err and len(err.strip().splitlines()) == 1


def test_profile_writes_jsonl_rows(capsys, tmp_path):
    out_file = tmp_path / "run.jsonl"
    code, out, _ = run(
        capsys,
        "profile",
        "tiny-opt",
        "--device",
        "cpu",
        "--seq",
        "32,48",
        "--dtype",
        "fp32",
        "--out",
        str(out_file),
    )
    assert code == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["seq"] for r in rows] == [32, 48]
    for r in rows:
        assert abs(r["rel_error"]["peak"]) < 0.03
        assert r["measured"]["source"] == "cpu"


def test_listings(capsys):
    for cmd in ("models", "gpus", "methods"):
        code, out, _ = run(capsys, cmd, "--json")
        assert code == 0 and json.loads(out)
    code, out, _ = run(capsys, "models", "--json")
    names = {r["name"]: r for r in json.loads(out)}
    assert names["llama-7b"]["params"] == 6_738_415_616


def test_estimate_does_not_import_torch():
    code = (
        "import sys\n"
        "from memplan.estimate import estimate\n"
        "from memplan.workload import Workload\n"
        "from memplan.cli import fit_report\n"
        "estimate('llama-7b', 'adamw', Workload(seq=256), gpu='rtx4090')\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
