"""The Phi-3 family: parameter counts equal the published totals (and the HF model on meta:
tests/test_models.py checks every preset's layout), the estimate agrees with the cpu backend
on tiny-phi3 for every method kind, and with the meta simulation on phi-3-mini."""

from __future__ import annotations

import pytest
from family_checks import CPU_METHODS, METHOD_IDS, METHODS, every_method_options, peak_agrees
from family_checks import phases_agree as _phases_agree

from memplan.methods.peft import PEFTSettings, lora_adapters
from memplan.methods.zo import ZOSettings
from memplan.models import config_from_dict, layout, load_config
from memplan.models.limits import buffer_bytes
from memplan.workload import Workload

pytest.importorskip("torch")

# totals as the model cards / safetensors indexes publish them
PUBLISHED = {
    "phi-3-mini": 3_821_079_552,
    "phi-3-medium": 13_960_238_080,
}


@pytest.mark.parametrize("name,total", PUBLISHED.items(), ids=list(PUBLISHED))
def test_published_totals(name, total):
    assert layout(load_config(name)).n_params == total


TINY = "tiny-phi3"


@pytest.mark.parametrize("method,opts", METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("seq", [64, 256])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_vs_cpu(method, opts, seq, dtype):
    """Each phase's peak within 2 %."""
    wl = Workload(batch=2, seq=seq, dtype=dtype, device="cpu")
    _phases_agree(load_config(TINY), method, wl, opts, 0.02)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_every_method(method):
    """Every method that runs on CPU (ZO, PEFT, GaLore, the hybrid split, forward-grad,
    inference): the peak within 1 %."""
    opts = every_method_options()
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    peak_agrees(TINY, method, wl, opts)


def test_lora_on_every_fused_linear():
    """LoRA on qkv_proj (the default: one adapter of (heads + 2 kv heads) * head_dim
    outputs), o_proj and both MLP linears."""
    cfg = load_config(TINY)
    h, d = cfg.hidden_size, cfg.head_dim
    qkv = lora_adapters(cfg, PEFTSettings())
    out = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
    assert [(a.in_f, a.out_f) for a in qkv] == [(h, out)] * cfg.num_layers
    every = PEFTSettings(target_modules=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
    assert len(lora_adapters(cfg, every)) == 4 * cfg.num_layers
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    _phases_agree(cfg, "lora", wl, {"peft": every}, 0.02)


def test_config_and_layout_details():
    cfg = load_config(TINY)
    assert (cfg.family, cfg.head_dim, cfg.num_kv_heads, cfg.tie_word_embeddings) == (
        "phi3",
        16,
        2,
        False,
    )
    assert buffer_bytes(cfg) == 2 * 8 * 4  # inv_freq + original_inv_freq: 16 rotary dims / 2
    names = [p.name for p in layout(cfg).params]
    assert names[1:3] == [
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.self_attn.qkv_proj.weight",
    ]
    half = config_from_dict({**cfg.raw, "partial_rotary_factor": 0.5}, source="tiny-phi3-half")
    assert buffer_bytes(half) == 2 * 4 * 4


def _shallow(model: str, layers: int):
    cfg = load_config(model)
    return config_from_dict({**cfg.raw, "num_hidden_layers": layers}, source=cfg.name)


@pytest.mark.slow
def test_adamw_vs_meta_full_size():
    """phi-3-mini at seq 512 (below its 2047-token sliding window): each phase within 1 %."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    _phases_agree(load_config("phi-3-mini"), "adamw", wl, {}, 0.01)


@pytest.mark.slow
def test_zo_sgd_vs_meta_full_width():
    """zo-sgd at full width on two layers (tests/test_zo.py says why)."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    zs = {"zo": ZOSettings(impl="chunked", chunk_elems=1 << 24)}
    _phases_agree(_shallow("phi-3-mini", 2), "zo-sgd", wl, zs, 0.01)
