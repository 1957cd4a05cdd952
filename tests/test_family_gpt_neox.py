"""The GPT-NeoX family (Pythia): parameter counts equal the published totals (and the HF model
on meta: tests/test_models.py checks every preset's layout), the estimate agrees with the cpu
backend on tiny-pythia for every method kind, attention path, residual form and
checkpointing, and with the meta simulation at 6.9B."""

from __future__ import annotations

import pytest
from family_checks import CPU_METHODS, METHOD_IDS, METHODS, every_method_options, peak_agrees
from family_checks import phases_agree as _phases_agree

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.methods.peft import PEFTSettings, lora_adapters
from memplan.methods.zo import ZOSettings
from memplan.models import config_from_dict, layout, load_config
from memplan.models.limits import buffer_bytes
from memplan.workload import Workload

pytest.importorskip("torch")

# totals as the model cards publish them
PUBLISHED = {
    "pythia-160m": 162_322_944,
    "pythia-1.4b": 1_414_647_808,
    "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
}


@pytest.mark.parametrize("name,total", PUBLISHED.items(), ids=list(PUBLISHED))
def test_published_totals(name, total):
    assert layout(load_config(name)).n_params == total


TINY = "tiny-pythia"


def _variant(**changes):
    cfg = load_config(TINY)
    return config_from_dict({**cfg.raw, **changes}, source=f"{TINY}-variant")


@pytest.mark.parametrize("method,opts", METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("seq", [64, 256])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_vs_cpu(method, opts, seq, dtype):
    """Each phase's peak within 2 %."""
    wl = Workload(batch=2, seq=seq, dtype=dtype, device="cpu")
    _phases_agree(load_config(TINY), method, wl, opts, 0.02)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_every_method(method):
    """Every method that runs on CPU (prefix and prompt tuning too: a causal LM): the peak
    within 1 %."""
    opts = every_method_options()
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    peak_agrees(TINY, method, wl, opts)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sequential_residual(dtype):
    """use_parallel_residual false: attn_output + x feeds post_attention_layernorm."""
    wl = Workload(batch=2, seq=64, dtype=dtype, device="cpu")
    _phases_agree(_variant(use_parallel_residual=False), "adamw", wl, {}, 0.02)


@pytest.mark.parametrize("wk", [{"attn": "eager"}, {"checkpointing": True}], ids=["eager", "ckpt"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eager_and_checkpointing(wk, dtype):
    wl = Workload(batch=2, seq=64, dtype=dtype, device="cpu", **wk)
    _phases_agree(load_config(TINY), "adamw", wl, {}, 0.03)


@pytest.mark.parametrize("method", ["adamw", "lora"])
def test_dropout_math_attention(method):
    """attention_dropout and hidden_dropout on: on CPU SDPA takes its math path, which copies
    the value chunk (a strided view of the fused projection) for its batched matmul."""
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    cfg = _variant(attention_dropout=0.1, hidden_dropout=0.1)
    _phases_agree(cfg, method, wl, {}, 0.02)


def test_lora_on_every_linear_of_the_fused_projection():
    """LoRA on query_key_value (peft's default for gpt_neox: one adapter of 3h outputs), dense
    and both MLP linears."""
    cfg = load_config(TINY)
    h = cfg.hidden_size
    qkv = lora_adapters(cfg, PEFTSettings())
    assert [(a.in_f, a.out_f) for a in qkv] == [(h, 3 * h)] * cfg.num_layers
    every = PEFTSettings(
        target_modules=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    )
    assert len(lora_adapters(cfg, every)) == 4 * cfg.num_layers
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    _phases_agree(cfg, "lora", wl, {"peft": every}, 0.02)


def test_config_and_layout_details():
    cfg = load_config(TINY)
    assert (cfg.family, cfg.head_dim, cfg.hidden_act, cfg.tie_word_embeddings) == (
        "gpt_neox",
        16,
        "gelu",
        False,
    )
    assert buffer_bytes(cfg) == 2 * 2 * 4  # inv_freq + original_inv_freq: 4 rotary dims / 2
    names = [p.name for p in layout(cfg).params]
    assert names[0] == "gpt_neox.embed_in.weight" and names[-1] == "lm_head.weight"
    no_bias = {p.name for p in layout(_variant(attention_bias=False)).params}
    assert "gpt_neox.layers.0.attention.query_key_value.bias" not in no_bias
    assert "gpt_neox.layers.0.mlp.dense_h_to_4h.bias" in no_bias
    tied = layout(_variant(tie_word_embeddings=True))
    assert "lm_head.weight" not in {p.name for p in tied.params}
    # transformers 5 configs state the fraction in rope_parameters
    rp = _variant(rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5})
    assert buffer_bytes(rp) == 2 * 4 * 4
    with pytest.raises(MemplanError, match="rotary_pct"):
        _variant(rotary_pct=0.0)
    with pytest.raises(MemplanError, match="positive even"):
        _variant(rotary_pct=0.1)  # int(16 * 0.1) = 1 rotary dimension


def test_unmodelled_activation_is_refused():
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    with pytest.raises(MemplanError, match="hidden_act 'gelu_fast'"):
        estimate(_variant(hidden_act="gelu_fast"), "adamw", wl)


def _shallow(model: str, layers: int):
    cfg = load_config(model)
    return config_from_dict({**cfg.raw, "num_hidden_layers": layers}, source=cfg.name)


@pytest.mark.slow
def test_vs_meta_pythia_6_9b():
    """adamw at full size and zo-sgd at full width on two layers (tests/test_zo.py says why),
    each phase within 1 % of the meta backend."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    _phases_agree(load_config("pythia-6.9b"), "adamw", wl, {}, 0.01)
    zs = {"zo": ZOSettings(impl="chunked", chunk_elems=1 << 24)}
    _phases_agree(_shallow("pythia-6.9b", 2), "zo-sgd", wl, zs, 0.01)
