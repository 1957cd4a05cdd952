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
        "from memplan.cli import run\n"
        "assert run(['estimate', 'llama-7b', '--seq', '256', '--json']) == 0\n"
        "assert run(['estimate', 'llama-7b', '--device', 'cpu']) == 0\n"
        "assert run(['plot', 'llama-7b', '--seq', '-1']) == 2\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_estimate_judges_the_fit_with_the_margin(capsys):
    code, out, _ = run(capsys, "estimate", "llama-7b", "-m", "lora", "--seq", "2315", "--json")
    d = json.loads(out)
    fit = d["fit"]
    assert fit["margin_bytes"] == d["budget"]["margin_bytes"] == int(0.02 * fit["total_bytes"])
    assert fit["headroom_bytes"] == fit["total_bytes"] - fit["margin_bytes"] - fit["need_bytes"]
    assert not fit["fits"] and fit["total_bytes"] - fit["need_bytes"] > 0  # only the margin
    code, out, _ = run(capsys, "estimate", "llama-7b", "-m", "lora", "--seq", "2315")
    assert "margin" in out and "does not fit" in out
    code, out, _ = run(
        capsys, "estimate", "llama-7b", "-m", "lora", "--seq", "2315", "--margin", "0"
    )
    assert "does not fit" not in out and "fits" in out


def test_estimate_on_cpu_fits_against_the_host(capsys):
    code, out, _ = run(capsys, "estimate", "tiny-llama", "--device", "cpu", "--json")
    d = json.loads(out)
    assert code == 0 and d["gpu"].startswith("host") and d["fit"]["context_bytes"] == 0
    assert d["fit"]["fits"]


def test_rotary_positions_beyond_the_config_warn_and_go_on(capsys):
    code, out, err = run(capsys, "estimate", "llama-7b", "--seq", "1000000000")
    assert code == 0
    assert [ln for ln in err.splitlines() if ln.strip()] == [err.strip()]
    assert err.startswith("warning:") and "max_position_embeddings" in err
    assert "TiB" in out and "does not fit" in out


def test_sizes_pick_a_readable_unit_or_the_one_asked(capsys):
    _, out, _ = run(capsys, "estimate", "tiny-llama", "--seq", "64")
    assert "MiB" in out and "0.00 GiB" not in out
    _, out, _ = run(capsys, "estimate", "llama-7b", "--unit", "GB")
    table = out.split("batch 1")[0]
    assert " GB" in table and "GiB" not in table


def test_piped_tables_are_never_cut(capsys):
    """stdout is not a terminal here: every cell comes out whole, whatever COLUMNS says."""
    code, out, _ = run(capsys, "models")
    assert code == 0 and "…" not in out
    _, js, _ = run(capsys, "models", "--json")
    for r in json.loads(js):
        assert r["name"] in out and f"{r['params']:,}" in out
    code, out, _ = run(capsys, "methods")
    _, js, _ = run(capsys, "methods", "--json")
    for m in json.loads(js):
        assert m["name"] in out and m["summary"] in out
    code, out, _ = run(capsys, "plan", "llama-7b")
    _, js, _ = run(capsys, "plan", "llama-7b", "--json")
    assert "…" not in out
    for r in json.loads(js)["ranked"]:
        if r["fits"]:
            assert r["label"] in out and r["note"] in out


def test_click_and_typer_usage_errors_become_one_line():
    import click
    from typer._click import exceptions as tclick

    from memplan.cli import usage_line

    for exc in (
        click.exceptions.NoSuchOption("--bogus"),
        click.exceptions.BadParameter("'x' is not a valid integer."),
        click.exceptions.UsageError("Missing command."),
        tclick.NoSuchOption("--bogus"),
        tclick.BadOptionUsage("--seq", "Option '--seq' requires an argument."),
    ):
        line = usage_line(exc, ["estimate", "llama-7b"])
        assert line and "\n" not in line and "memplan" in line
    assert usage_line(ValueError("a bug")) is None  # not a usage error: a traceback is right
