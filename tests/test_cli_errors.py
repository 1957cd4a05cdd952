"""Bad input through the installed `memplan` entry point: one line on stderr, exit 2, never a
traceback; and Ctrl-C in a sweep (exit 130, finished points printed, saved and not redone).

Each case runs the console script in a subprocess with PYTHONPATH set to this checkout, as a
user's shell would. None of the bad-input cases may import torch (each costs ~0.3 s): every
check happens before a step is built.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "memplan" / "models" / "presets"


def _entry_point() -> str:
    here = Path(sys.executable).parent / "memplan"
    if here.is_file():
        return str(here)
    found = shutil.which("memplan")
    if found is None:
        pytest.skip("the memplan console script is not installed (pip install -e .)")
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "80"
    return env


def memplan(*args: str, cwd: Path | None = None, timeout: float = 60):
    return subprocess.run(
        [_entry_point(), *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Broken inputs, by name, in one folder (the cases' working directory)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "invalid.json").write_text('{"model_type": "llama", "hidden_size": 64,')
    (d / "nokeys.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (d / "bloom.json").write_text(json.dumps({"model_type": "bloom", "n_embd": 64}))
    t5 = {"model_type": "t5", "is_encoder_decoder": True, "d_model": 512, "num_layers": 6}
    (d / "t5.json").write_text(json.dumps(t5))
    vit = {"model_type": "vit", "image_size": 224, "patch_size": 16, "hidden_size": 768}
    (d / "vit.json").write_text(json.dumps(vit))
    remote = {"model_type": "evil", "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}
    (d / "remote.json").write_text(json.dumps(remote))
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "emptydir").mkdir()
    (d / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (d / "missing_fields.jsonl").write_text(json.dumps({"seq": 64}) + "\n")
    (d / "no_measured.jsonl").write_text(
        json.dumps({"seq": 64, "estimate": {"peak_bytes": 1, "info": {}}}) + "\n"
    )
    (d / "bad_middle.jsonl").write_text("not json\n{}\n")
    (d / "empty.jsonl").write_text("")
    (d / "plan_nokeys.json").write_text(
        json.dumps({"model": "tiny-llama", "recommended": {"zo_layers": 1}})
    )
    (d / "plan_list.json").write_text("[]")
    (d / "plan_invalid.json").write_text("{")
    (d / "plan_none.json").write_text(json.dumps({"model": "tiny-llama", "recommended": None}))
    wl = {
        "seq": 64,
        "batch": 1,
        "dtype": "fp32",
        "attn": "sdpa",
        "checkpointing": False,
        "optimizer_impl": "foreach",
        "device": "cuda",
    }
    rec = {"method": "hybrid", "zo_layers": 1, "fo": "adamw", "zo": "zo-sgd", "workload": wl}
    (d / "plan_opt.json").write_text(json.dumps({"model": "tiny-opt", "recommended": rec}))
    (d / "plan_ok.json").write_text(json.dumps({"model": "tiny-llama", "recommended": rec}))
    return d


P = "tiny-llama"
CASES = [
    # usage: commands, arguments, flags
    ("no-command", []),
    ("unknown-command", ["estimat", "llama-7b"]),
    ("estimate-missing-model", ["estimate"]),
    ("plan-missing-model", ["plan"]),
    ("plot-missing-source", ["plot"]),
    ("profile-plan-without-model", ["profile", "--plan", "plan_ok.json"]),
    ("unknown-flag", ["estimate", "llama-7b", "--bogus"]),
    # a method knob that does not apply to the chosen method (the registry's knobs)
    ("layerwise-with-adamw", ["estimate", "llama-7b", "--layerwise"]),
    ("rank-with-fo-sgd", ["estimate", "llama-7b", "--method", "fo-sgd", "--rank", "8"]),
    ("zo-layers-with-adamw", ["estimate", "llama-7b", "--zo-layers", "3"]),
    ("impl-with-adamw", ["estimate", "llama-7b", "--impl", "fused"]),
    (
        "optimizer-impl-with-zo-sgd",
        ["estimate", "llama-7b", "--method", "zo-sgd", "--optimizer-impl", "fused"],
    ),
    ("profile-rank-with-adamw", ["profile", "tiny-llama", "--rank", "4", "--device", "cpu"]),
    ("flag-without-value", ["estimate", "llama-7b", "--seq"]),
    ("extra-argument", ["estimate", "llama-7b", "extra"]),
    ("listing-extra-argument", ["models", "extra"]),
    # --seq
    ("estimate-seq-1e9", ["estimate", "llama-7b", "--seq", "1e9"]),
    ("estimate-seq-list", ["estimate", "llama-7b", "--seq", "256,512"]),
    ("plan-seq-list", ["plan", "llama-7b", "--seq", "256,512"]),
    ("estimate-seq-zero", ["estimate", "llama-7b", "--seq", "0"]),
    ("estimate-seq-negative", ["estimate", "llama-7b", "--seq", "-5"]),
    ("estimate-seq-word", ["estimate", "llama-7b", "--seq", "long"]),
    ("profile-seq-empty-item", ["profile", P, "--seq", "64,,128"]),
    ("profile-seq-zero", ["profile", P, "--seq", "0"]),
    ("profile-seq-repeated", ["profile", P, "--seq", "64,64"]),
    ("profile-seq-word", ["profile", P, "--seq", "12,x"]),
    ("plot-seq-negative", ["plot", P, "--seq", "-1"]),
    ("learned-positions", ["estimate", "roberta-large", "--seq", "2048"]),
    # numbers: negative, zero, non-numeric, float for int
    ("batch-zero", ["estimate", P, "--batch", "0"]),
    ("batch-negative", ["estimate", P, "--batch", "-2"]),
    ("batch-word", ["estimate", P, "--batch", "two"]),
    ("batch-float", ["estimate", P, "--batch", "1.5"]),
    ("plan-batch-float", ["plan", P, "--batch", "1.5"]),
    ("profile-batch-zero", ["profile", P, "--batch", "0"]),
    ("q-zero", ["estimate", P, "-m", "zo-sgd", "--q", "0"]),
    ("q-word", ["estimate", P, "-m", "zo-sgd", "--q", "many"]),
    ("q-float", ["estimate", P, "-m", "zo-sgd", "--q", "2.5"]),
    ("chunk-zero", ["estimate", P, "-m", "zo-sgd", "--chunk", "0"]),
    ("chunk-word", ["estimate", P, "-m", "zo-sgd", "--chunk", "big"]),
    ("sparsity-above-1", ["estimate", P, "-m", "zo-sparse", "--sparsity", "1.5"]),
    ("sparsity-word", ["estimate", P, "-m", "zo-sparse", "--sparsity", "most"]),
    ("alpha-zero", ["estimate", P, "-m", "lora", "--alpha", "0"]),
    ("alpha-word", ["estimate", P, "-m", "lora", "--alpha", "x"]),
    ("lora-dropout-one", ["estimate", P, "-m", "lora", "--lora-dropout", "1"]),
    ("rank-zero", ["estimate", P, "-m", "lora", "--rank", "0"]),
    ("rank-float", ["estimate", P, "-m", "galore", "--rank", "8.5"]),
    ("proj-gap-zero", ["estimate", P, "-m", "galore", "--update-proj-gap", "0"]),
    ("proj-gap-word", ["estimate", P, "-m", "galore", "--update-proj-gap", "often"]),
    ("scale-negative", ["estimate", P, "-m", "galore", "--scale", "-1"]),
    ("virtual-tokens-zero", ["estimate", P, "-m", "prefix", "--virtual-tokens", "0"]),
    ("zo-layers-negative", ["estimate", P, "-m", "hybrid", "--zo-layers", "-1"]),
    ("zo-layers-word", ["estimate", P, "-m", "hybrid", "--zo-layers", "half"]),
    ("hybrid-without-split", ["estimate", "llama-7b", "--method", "hybrid"]),
    ("budget-word", ["plan", "llama-7b", "--budget", "lots"]),
    ("budget-zero", ["estimate", P, "--budget", "0GB"]),
    ("margin-150pct", ["plan", "llama-7b", "--margin", "150%"]),
    ("margin-word", ["estimate", P, "--margin", "2x"]),
    # choices
    ("dtype", ["estimate", P, "--dtype", "int4"]),
    ("attn", ["estimate", P, "--attn", "flash3"]),
    ("device", ["estimate", P, "--device", "tpu"]),
    ("profile-device", ["profile", P, "--device", "tpu"]),
    ("optimizer-impl", ["estimate", P, "--optimizer-impl", "turbo"]),
    ("unit", ["estimate", P, "--unit", "parsec"]),
    ("plan-unit", ["plan", P, "--unit", "furlong"]),
    ("profile-unit", ["profile", P, "--unit", "x"]),
    ("zo-impl", ["estimate", P, "-m", "zo-sgd", "--impl", "magic"]),
    ("proj-type", ["estimate", P, "-m", "galore", "--proj-type", "diagonal"]),
    ("galore-step", ["estimate", P, "-m", "galore", "--galore-step", "sometimes"]),
    ("maximize-what", ["plan", "llama-7b", "--maximize", "width", "--method", "adamw"]),
    ("maximize-without-method", ["plan", "llama-7b", "--maximize", "seq"]),
    ("plan-fo-is-zo", ["plan", "llama-7b", "--fo", "zo-sgd"]),
    ("plan-too-small", ["plan", "opt-13b"]),
    # names
    ("unknown-model", ["estimate", "llama7b"]),
    ("unknown-method", ["estimate", "llama-7b", "--method", "adamm"]),
    ("unknown-gpu", ["estimate", "llama-7b", "--gpu", "rtx409"]),
    ("plan-unknown-gpu", ["plan", "llama-7b", "--gpu", "rtx9090"]),
    ("profile-unknown-method", ["profile", P, "--method", "adamm"]),
    ("plot-unknown-method", ["plot", P, "--method", "adamw,adamm"]),
    ("gpu-with-device-cpu", ["estimate", "llama-7b", "--device", "cpu", "--gpu", "h100"]),
    # model configs and paths
    ("config-invalid-json", ["estimate", "invalid.json"]),
    ("config-missing-keys", ["estimate", "nokeys.json"]),
    ("config-unsupported-type", ["estimate", "bloom.json"]),
    ("config-encoder-decoder", ["estimate", "t5.json"]),
    ("config-vision", ["estimate", "vit.json"]),
    ("config-custom-code", ["profile", "remote.json", "--device", "cpu"]),
    ("config-not-object", ["estimate", "list.json"]),
    ("model-dir-without-config", ["estimate", "emptydir"]),
    ("missing-path", ["estimate", "./nope/config.json"]),
    # plan files
    ("plan-file-missing", ["profile", P, "--plan", "nope.json"]),
    ("plan-file-lacks-keys", ["profile", P, "--plan", "plan_nokeys.json"]),
    ("plan-file-list", ["profile", P, "--plan", "plan_list.json"]),
    ("plan-file-invalid", ["profile", P, "--plan", "plan_invalid.json"]),
    ("plan-file-nothing-fit", ["profile", P, "--plan", "plan_none.json"]),
    ("plan-file-other-model", ["profile", P, "--plan", "plan_opt.json"]),
    ("plan-and-seq", ["profile", P, "--plan", "plan_ok.json", "--seq", "128"]),
    ("plan-and-method", ["profile", P, "--plan", "plan_ok.json", "-m", "adamw"]),
    ("plan-and-batch", ["profile", P, "--plan", "plan_ok.json", "--batch", "1"]),
    # --out and -o
    ("out-missing-folder", ["profile", P, "--seq", "16", "--out", "nodir/run.jsonl"]),
    ("out-is-folder", ["profile", P, "--seq", "16", "--out", "emptydir"]),
    ("out-unwritable", ["profile", P, "--seq", "16", "--out", "/proc/memplan.jsonl"]),
    ("out-not-a-sweep", ["profile", P, "--seq", "16", "--out", "binary.jsonl"]),
    ("plot-o-txt", ["plot", P, "-o", "x.txt"]),
    ("plot-o-unwritable", ["plot", P, "-o", "/proc/memplan.png"]),
    ("plot-o-missing-folder", ["plot", P, "-o", "nodir/x.png"]),
    # plot sources
    ("plot-binary", ["plot", "binary.jsonl"]),
    ("plot-row-missing-fields", ["plot", "missing_fields.jsonl"]),
    ("plot-row-missing-measured", ["plot", "no_measured.jsonl"]),
    ("plot-bad-middle-line", ["plot", "bad_middle.jsonl"]),
    ("plot-empty", ["plot", "empty.jsonl"]),
    ("plot-missing-file", ["plot", "nope.jsonl"]),
    # the host cannot hold the step: refused before torch starts (1.2 TiB)
    ("profile-cpu-too-big", ["profile", "llama-65b", "--device", "cpu", "--dtype", "fp32"]),
]


@pytest.fixture(scope="module")
def results(files) -> dict[str, subprocess.CompletedProcess]:
    """Every case's run, started 4 at a time (each is mostly interpreter start-up), unless
    pytest-xdist already spreads the cases over workers: then each runs on its own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(memplan, *args, cwd=files) for name, args in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name, args", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(files, results, name, args):
    r = results.get(name) or memplan(*args, cwd=files)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.stdout + r.stderr
    assert not (files / "nodir").exists()


def test_help_still_works():
    r = memplan("--help")
    assert r.returncode == 0 and "estimate" in r.stdout and not r.stderr
    r = memplan("estimate", "--help")
    assert r.returncode == 0 and "--margin" in r.stdout


def test_plan_conflict_names_the_flags(files):
    r = memplan("profile", P, "--plan", "plan_ok.json", "--seq", "64", "--dtype", "fp32", cwd=files)
    assert "--seq" in r.stderr and "--dtype" in r.stderr and "--plan" in r.stderr


def test_ctrl_c_keeps_finished_points_and_a_rerun_skips_them(tmp_path):
    """SIGINT mid-sweep: exit 130, the finished points printed and saved whole, once each;
    the same sweep again measures none of them."""
    out = tmp_path / "run.jsonl"
    seqs = ",".join(str(16 * i) for i in range(1, 129))  # 16..2048: far more than will finish
    args = ["profile", P, "--method", "fo-sgd", "--device", "cpu", "--dtype", "fp32"]
    proc = subprocess.Popen(
        [_entry_point(), *args, "--seq", seqs, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # a shell's background job may inherit SIGINT ignored; the user's Ctrl-C is not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_file() and out.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    text = out.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    done = [r["seq"] for r in rows]
    assert done and len(done) < 128
    assert done == sorted(set(done)) == [16 * i for i in range(1, len(done) + 1)]
    assert all("measured" in r for r in rows)
    assert stdout.count("peak phase:") == len(rows)  # every finished point printed
    assert f"{len(rows)} point(s) finished" in stderr

    again = memplan(*args, "--seq", ",".join(map(str, done)), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{len(rows)} of {len(rows)} point(s) already in" in again.stderr
    assert again.stdout.count("peak phase:") == len(rows)
    assert out.read_text() == text  # nothing measured twice, nothing appended


def test_why_a_config_is_out_of_scope(files, results):
    """The line says what kind of model it is, and that custom code is never run."""
    names = ("config-encoder-decoder", "config-vision", "config-custom-code")
    err = {n: (results.get(n) or memplan(*a, cwd=files)).stderr for n, a in CASES if n in names}
    assert "encoder-decoder model" in err["config-encoder-decoder"]
    assert "vision or multimodal model" in err["config-vision"]
    assert "custom modeling code, which memplan never runs" in err["config-custom-code"]


def test_custom_code_of_a_known_type_is_never_run(tmp_path):
    """A config.json whose auto_map names modeling code that does not exist, with a model_type
    memplan knows: estimated and profiled from the model_type (importing the named module
    would fail), and no code path passes trust_remote_code."""
    cfg = json.loads((PRESETS / "tiny-llama.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    est = memplan("estimate", str(tmp_path), "--json")
    assert est.returncode == 0, est.stderr
    prof = memplan("profile", str(tmp_path), "--device", "cpu", "--seq", "16", "--json")
    assert prof.returncode == 0, prof.stderr
    assert json.loads(prof.stdout)[0]["measured"]["peak_bytes"] > 0
    for path in (ROOT / "memplan").rglob("*.py"):
        assert "trust_remote_code=True" not in path.read_text(), path
