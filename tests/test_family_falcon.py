"""The Falcon family: parameter counts equal the published total (and the HF model on meta:
tests/test_models.py checks every preset's layout), the estimate agrees with the cpu backend
on tiny-falcon for every method kind (and on the new_decoder_architecture, sequential and
multi-head variants), and with the meta simulation on falcon-7b."""

from __future__ import annotations

import pytest
from family_checks import CPU_METHODS, METHOD_IDS, METHODS, ZO, every_method_options, peak_agrees
from family_checks import phases_agree as _phases_agree

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.methods.peft import PEFTSettings, lora_adapters
from memplan.methods.zo import ZOSettings
from memplan.models import config_from_dict, layout, load_config
from memplan.models.limits import buffer_bytes
from memplan.workload import Workload

pytest.importorskip("torch")

# the total as the model card / safetensors index publishes it
PUBLISHED = {"falcon-7b": 6_921_720_704}


@pytest.mark.parametrize("name,total", PUBLISHED.items(), ids=list(PUBLISHED))
def test_published_totals(name, total):
    assert layout(load_config(name)).n_params == total


TINY = "tiny-falcon"


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
    inference): the peak within 1 %; prefix tuning refused (peft's prefix does not fit the
    multi-query cache)."""
    opts = every_method_options()
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    if method == "prefix":  # peft's prefix has every head; the model's keys one
        with pytest.raises(MemplanError, match="prefix tuning does not work"):
            estimate(TINY, method, wl, **opts)
        return
    peak_agrees(TINY, method, wl, opts)


def _variant(**keys):
    cfg = load_config(TINY)
    name = "tiny-falcon-" + "-".join(f"{k}={v}" for k, v in keys.items())
    return config_from_dict({**cfg.raw, **keys}, source=name)


NEW = {"new_decoder_architecture": True, "num_kv_heads": 2}


@pytest.mark.parametrize("seq", [64, 256])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_new_decoder_architecture(seq, dtype):
    """ln_attn / ln_mlp, 2 key/value groups broadcast to every head (flattened copies), SDPA's
    flash kernel with the converted mask: each phase within 2 %."""
    cfg = _variant(**NEW)
    assert cfg.num_kv_heads == 2
    names = [p.name for p in layout(cfg).params]
    assert "transformer.h.0.ln_attn.weight" in names and "transformer.h.0.ln_mlp.bias" in names
    wl = Workload(batch=2, seq=seq, dtype=dtype, device="cpu")
    _phases_agree(cfg, "adamw", wl, {}, 0.02)


@pytest.mark.parametrize(
    "keys",
    [
        {"parallel_attn": False, "hidden_dropout": 0.1, "attention_dropout": 0.1},
        {"multi_query": False, "bias": True},
    ],
    ids=["sequential-dropout", "multi-head-bias"],
)
def test_variants(keys):
    """The sequential residual (post_attention_layernorm, attention_dropout on the attention
    output) and the 3 * hidden projection with biases: each phase within 2 %."""
    wl = Workload(batch=2, seq=256, dtype="fp32", device="cpu")
    _phases_agree(_variant(**keys), "adamw", wl, {}, 0.02)


@pytest.mark.parametrize("dtype", ["fp32", "amp"])
def test_eager_attention(dtype):
    """attn="eager" (FalconAttention's own matmuls; the probabilities bound until the next
    block returns): each phase within 2 %."""
    wl = Workload(batch=2, seq=256, dtype=dtype, device="cpu", attn="eager")
    _phases_agree(load_config(TINY), "adamw", wl, {}, 0.02)
    _phases_agree(load_config(TINY), "zo-sgd", wl, {"zo": ZO}, 0.02)


def test_lora_on_every_linear():
    """LoRA on query_key_value (the default: one adapter of (heads + 2) * head_dim outputs),
    dense and both MLP linears."""
    cfg = load_config(TINY)
    h, d = cfg.hidden_size, cfg.head_dim
    qkv = lora_adapters(cfg, PEFTSettings())
    assert [(a.in_f, a.out_f) for a in qkv] == [(h, (cfg.num_heads + 2) * d)] * cfg.num_layers
    every = PEFTSettings(
        target_modules=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    )
    assert len(lora_adapters(cfg, every)) == 4 * cfg.num_layers
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    _phases_agree(cfg, "lora", wl, {"peft": every}, 0.02)


def test_config_and_layout_details():
    cfg = load_config(TINY)
    assert (cfg.family, cfg.head_dim, cfg.num_kv_heads, cfg.tie_word_embeddings) == (
        "falcon",
        16,
        1,
        True,
    )
    assert cfg.intermediate_size == 4 * cfg.hidden_size  # ffn_hidden_size's default
    assert buffer_bytes(cfg) == 2 * 8 * 4  # inv_freq + original_inv_freq: head_dim / 2 each
    names = [p.name for p in layout(cfg).params]
    assert names[1:3] == [
        "transformer.h.0.self_attention.query_key_value.weight",
        "transformer.h.0.self_attention.dense.weight",
    ]
    assert "lm_head.weight" not in names  # tied
    with pytest.raises(MemplanError, match="alibi"):
        config_from_dict({**cfg.raw, "alibi": True}, source="tiny-falcon-alibi")


def _shallow(model: str, layers: int):
    cfg = load_config(model)
    return config_from_dict({**cfg.raw, "num_hidden_layers": layers}, source=cfg.name)


@pytest.mark.slow
def test_adamw_vs_meta_full_size():
    """falcon-7b at seq 512: each phase within 1 %."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    _phases_agree(load_config("falcon-7b"), "adamw", wl, {}, 0.01)


@pytest.mark.slow
def test_zo_sgd_vs_meta_full_width():
    """zo-sgd at full width on two layers (tests/test_zo.py says why)."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    zs = {"zo": ZOSettings(impl="chunked", chunk_elems=1 << 24)}
    _phases_agree(_shallow("falcon-7b", 2), "zo-sgd", wl, zs, 0.01)
