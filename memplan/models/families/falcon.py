"""Falcon (FalconForCausalLM): word embeddings, per layer LayerNorm(s), one fused
query/key/value projection (`query_key_value`: multi-query, heads + 2 key/value rows of
head_dim, in falcon-7b; num_kv_heads groups of (heads / kv + 2) * head_dim with
`new_decoder_architecture`; 3 * hidden otherwise), `dense`, a GELU MLP (`dense_h_to_4h`,
`dense_4h_to_h`, ffn_hidden_size = 4 * hidden unless stated), biases on every linear when
`bias`, rotary positions on the whole head, the final LayerNorm `ln_f`, the head tied to the
embeddings unless the config unties it. ALiBi configs (`alibi: true`) are refused."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.family import Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig, int_key


def _flag(d: dict[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    return default if value is None else bool(value)


def attention_kind(d: dict[str, Any]) -> str:
    """ "new" (new_decoder_architecture: grouped), "mqa" (multi_query: one key/value head) or
    "mha" (3 * hidden), as FalconAttention sizes query_key_value."""
    if _flag(d, "new_decoder_architecture", False):
        return "new"
    return "mqa" if _flag(d, "multi_query", True) else "mha"


def ln_count(d: dict[str, Any]) -> int:
    """LayerNorms per decoder layer: 2 (ln_attn, ln_mlp) with new_decoder_architecture (unless
    num_ln_in_parallel_attn says 1) or a sequential residual (input_layernorm,
    post_attention_layernorm); else 1 (input_layernorm)."""
    if not _flag(d, "parallel_attn", True):
        return 2
    n = d.get("num_ln_in_parallel_attn")
    if n is None and _flag(d, "new_decoder_architecture", False):
        n = 2
    return 2 if n == 2 else 1


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    if _flag(d, "alibi", False):
        raise MemplanError(
            f"{where}: Falcon with alibi=true has no memory model (modelled: rotary positions)"
        )
    hidden, heads = int_key(d, "hidden_size", where), int_key(d, "num_attention_heads", where)
    head_dim = hidden // heads if heads else 0
    if heads and head_dim * heads != hidden:
        raise MemplanError(
            f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}; "
            "fix the config"
        )
    kind = attention_kind(d)
    if kind == "mqa":
        kv = 1
    else:
        kv = d.get("num_kv_heads")
        kv = heads if kv is None else int_key(d, "num_kv_heads", where)
    if kind == "new" and (kv <= 0 or heads % kv):
        raise MemplanError(
            f"{where}: num_kv_heads {kv} does not divide num_attention_heads {heads}; fix the "
            "config"
        )
    ffn = d.get("ffn_hidden_size")
    inter = 4 * hidden if ffn is None else int_key(d, "ffn_hidden_size", where)
    return {
        "num_kv_heads": kv,
        "head_dim": head_dim,
        "intermediate_size": inter,
        "hidden_act": str(d.get("activation") or "gelu"),
        "word_embed_proj_dim": hidden,
    }


def qkv_out(cfg: ModelConfig) -> int:
    """query_key_value's output width."""
    h, d = cfg.hidden_size, cfg.head_dim
    kind = attention_kind(cfg.raw)
    if kind == "new":
        return (2 * cfg.num_kv_heads + cfg.num_heads) * d
    return h + 2 * d if kind == "mqa" else 3 * h


def rotary_buffers(cfg: ModelConfig) -> int:
    """FalconRotaryEmbedding's inv_freq + original_inv_freq (head_dim / 2 each), fp32."""
    return 2 * (cfg.head_dim // 2) * 4


def _falcon(cfg: ModelConfig) -> list[ParamSpec]:
    """word_embeddings; per layer the attention (query_key_value, dense), the MLP, then the
    LayerNorms (FalconDecoderLayer's registration order); ln_f; the head unless tied."""
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    bias = _flag(cfg.raw, "bias", False)
    names = (
        ("input_layernorm", "post_attention_layernorm")
        if not _flag(cfg.raw, "parallel_attn", True)
        else ("ln_attn", "ln_mlp")
        if ln_count(cfg.raw) == 2
        else ("input_layernorm",)
    )
    b = Builder()
    b.add("transformer.word_embeddings.weight", (v, h), None, "embed")
    for i in range(cfg.num_layers):
        p = f"transformer.h.{i}"
        b.linear(f"{p}.self_attention.query_key_value", h, qkv_out(cfg), bias, i, "attn")
        b.linear(f"{p}.self_attention.dense", h, h, bias, i, "attn")
        b.linear(f"{p}.mlp.dense_h_to_4h", h, inter, bias, i, "mlp")
        b.linear(f"{p}.mlp.dense_4h_to_h", inter, h, bias, i, "mlp")
        for n in names:
            b.layer_norm(f"{p}.{n}", h, i)
    b.layer_norm("transformer.ln_f", h, None)
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


FAMILY = register_family(
    Family(
        "falcon",
        {"falcon": "FalconForCausalLM"},
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
        config,
        _falcon,
        max_position_default={"falcon": 2048},
        tie_default={"falcon": True},
        linears=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        lora_default=("query_key_value",),  # peft's default target for falcon
        buffer_bytes=rotary_buffers,
        gqa=True,
    )
)
