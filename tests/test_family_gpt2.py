"""The GPT-2 family (GPT2LMHeadModel): parameter counts equal the published totals, the estimate
agrees with the cpu backend on tiny-gpt2 for every method (SDPA's math path and eager
attention, activation checkpointing) and with the meta simulation on gpt2-xl."""

from __future__ import annotations

import pytest
from family_checks import CPU_METHODS, METHOD_IDS, METHODS, every_method_options, peak_agrees
from family_checks import phases_agree as _phases_agree

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.methods.peft import PEFTSettings, lora_adapters
from memplan.methods.zo import ZOSettings
from memplan.models import config_from_dict, layout, load_config
from memplan.workload import Workload

pytest.importorskip("torch")

# totals as the model cards publish them
PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name,total", PUBLISHED.items(), ids=list(PUBLISHED))
def test_published_totals(name, total):
    assert layout(load_config(name)).n_params == total


def test_config_names_and_layout():
    """GPT2Config's n_embd / n_layer / n_head / n_positions are read as the common sizes;
    n_inner null is 4 h; Conv1D weights are (in, out); the head is tied."""
    c = load_config("gpt2-medium")
    assert (c.family, c.hidden_size, c.num_layers, c.num_heads) == ("gpt2", 1024, 24, 16)
    assert (c.intermediate_size, c.max_position_embeddings, c.head_dim) == (4096, 1024, 64)
    assert c.tie_word_embeddings and c.hidden_act == "gelu_new"
    shapes = layout(load_config("tiny-gpt2")).named_shapes()
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (64, 192)
    assert shapes["transformer.h.1.mlp.c_proj.weight"] == (256, 64)
    assert shapes["transformer.wpe.weight"] == (512, 64)
    assert "lm_head.weight" not in shapes


def test_config_refusals():
    raw = load_config("tiny-gpt2").raw
    with pytest.raises(MemplanError, match="activation_function 'swish'"):
        config_from_dict({**raw, "activation_function": "swish"})
    with pytest.raises(MemplanError, match="add_cross_attention"):
        config_from_dict({**raw, "add_cross_attention": True})
    with pytest.raises(MemplanError, match="lacks 'n_head'"):
        config_from_dict({k: v for k, v in raw.items() if k != "n_head"})
    cfg = config_from_dict({**raw, "reorder_and_upcast_attn": True}, source="tiny-gpt2")
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu", attn="eager")
    with pytest.raises(MemplanError, match="reorder_and_upcast_attn"):
        estimate(cfg, "adamw", wl)


def test_lora_adapters_read_conv1d_shapes():
    """Conv1D stores (in, out): c_fc's adapter maps h -> 4h, the MLP's c_proj 4h -> h."""
    cfg = load_config("tiny-gpt2")
    ads = {a.base: a for a in lora_adapters(cfg, PEFTSettings(target_modules=("c_fc", "c_proj")))}
    fc, proj = ads["transformer.h.0.mlp.c_fc"], ads["transformer.h.0.mlp.c_proj"]
    assert (fc.in_f, fc.out_f) == (64, 256) and (proj.in_f, proj.out_f) == (256, 64)
    assert "transformer.h.0.attn.c_proj" in ads


TOLERANCE = 0.02  # each phase's peak within 2 % on tiny-gpt2


@pytest.mark.parametrize("method,opts", METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("seq", [64, 256])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_vs_cpu(method, opts, seq, dtype):
    wl = Workload(batch=2, seq=seq, dtype=dtype, device="cpu")
    _phases_agree(load_config("tiny-gpt2"), method, wl, opts, TOLERANCE)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_every_method(method):
    """Every method that runs on CPU on tiny-gpt2: the peak within 1 %. GPT-2 drops attention
    probabilities in training, so SDPA takes the math path on CPU; prefix tuning has no model
    of that path and runs with eager attention."""
    opts = every_method_options()
    attn = "eager" if method == "prefix" else "sdpa"
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu", attn=attn)
    peak_agrees("tiny-gpt2", method, wl, opts)


@pytest.mark.parametrize(
    "attn,checkpointing",
    [("eager", False), ("sdpa", True), ("eager", True)],
    ids=["eager", "checkpointing", "eager-checkpointing"],
)
def test_eager_and_checkpointing(attn, checkpointing):
    wl = Workload(
        batch=2, seq=64, dtype="fp32", device="cpu", attn=attn, checkpointing=checkpointing
    )
    _phases_agree(load_config("tiny-gpt2"), "adamw", wl, {}, 0.03)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lora_on_every_conv1d(dtype):
    """LoRA on c_attn, both c_proj and c_fc: peft wraps Conv1D with fan_in_fan_out."""
    wl = Workload(batch=2, seq=64, dtype=dtype, device="cpu")
    ps = PEFTSettings(target_modules=("c_attn", "c_proj", "c_fc"))
    _phases_agree(load_config("tiny-gpt2"), "lora", wl, {"peft": ps}, TOLERANCE)


@pytest.mark.slow
def test_adamw_vs_meta_full_size():
    """gpt2-xl at full size on the meta backend: each phase's peak within 1 %."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    _phases_agree(load_config("gpt2-xl"), "adamw", wl, {}, 0.01)


@pytest.mark.slow
def test_zo_sgd_vs_meta_full_width():
    """zo-sgd on two full-width layers of gpt2-xl (the whole model took 104 s on meta; a ZO
    step's peak is the weights plus one layer's and one tensor's transients, and the estimate's
    depth extrapolation is exact: tests/test_plan.py): each phase within 1 %."""
    cfg = load_config("gpt2-xl")
    cfg = config_from_dict({**cfg.raw, "n_layer": 2}, source=cfg.name)
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    zs = {"zo": ZOSettings(impl="chunked", chunk_elems=1 << 24)}
    _phases_agree(cfg, "zo-sgd", wl, zs, 0.01)
