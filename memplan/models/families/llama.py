"""LLaMA and Mistral (LlamaForCausalLM, MistralForCausalLM): RMSNorm, rotary positions,
grouped-query attention, a gated MLP, an untied head unless the config ties it."""

from __future__ import annotations

from typing import Any

from memplan.models.family import DECODER_SIZES, Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig, int_key, opt_int


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    hidden, heads = int_key(d, "hidden_size", where), int_key(d, "num_attention_heads", where)
    return {
        "num_kv_heads": opt_int(d, "num_key_value_heads", heads, where),
        "head_dim": opt_int(d, "head_dim", hidden // heads if heads else 0, where),
        "intermediate_size": int_key(d, "intermediate_size", where),
        "hidden_act": str(d.get("hidden_act", "silu")),
        "word_embed_proj_dim": hidden,
    }


def rotary_buffers(cfg: ModelConfig) -> int:
    """Rotary inv_freq + original_inv_freq, fp32."""
    return 2 * (cfg.head_dim // 2) * 4


def decoder_layout(
    cfg: ModelConfig,
    qkv_bias: bool = False,
    o_bias: bool = False,
    mlp_bias: bool = False,
    qk_norm: bool = False,
) -> list[ParamSpec]:
    """The LLaMA-style decoder's parameters (embeddings, per layer q/k/v/o projections, an
    optional RMSNorm over each head of q and k, the gated MLP and two RMSNorms; the final
    norm; the head unless tied), in registration order."""
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    b = Builder()
    b.add("model.embed_tokens.weight", (v, h), None, "embed")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        b.linear(f"{p}.self_attn.q_proj", h, q_out, qkv_bias, i, "attn")
        b.linear(f"{p}.self_attn.k_proj", h, kv_out, qkv_bias, i, "attn")
        b.linear(f"{p}.self_attn.v_proj", h, kv_out, qkv_bias, i, "attn")
        b.linear(f"{p}.self_attn.o_proj", q_out, h, o_bias, i, "attn")
        if qk_norm:
            b.add(f"{p}.self_attn.q_norm.weight", (cfg.head_dim,), i, "norm")
            b.add(f"{p}.self_attn.k_norm.weight", (cfg.head_dim,), i, "norm")
        b.linear(f"{p}.mlp.gate_proj", h, inter, mlp_bias, i, "mlp")
        b.linear(f"{p}.mlp.up_proj", h, inter, mlp_bias, i, "mlp")
        b.linear(f"{p}.mlp.down_proj", inter, h, mlp_bias, i, "mlp")
        b.add(f"{p}.input_layernorm.weight", (h,), i, "norm")
        b.add(f"{p}.post_attention_layernorm.weight", (h,), i, "norm")
    b.add("model.norm.weight", (h,), None, "norm")
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


def _llama(cfg: ModelConfig) -> list[ParamSpec]:
    # MistralAttention / MistralMLP have no bias switches; Llama's follow attention_bias/mlp_bias
    llama = cfg.model_type == "llama"
    attn_bias = llama and bool(cfg.raw.get("attention_bias", False))
    mlp_bias = llama and bool(cfg.raw.get("mlp_bias", False))
    return decoder_layout(cfg, attn_bias, attn_bias, mlp_bias)


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


FAMILY = register_family(
    Family(
        "llama",
        {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"},
        DECODER_SIZES,
        config,
        _llama,
        max_position_default={"llama": 2048, "mistral": 4096 * 32},
        tie_default={"llama": False, "mistral": False},
        linears=LINEARS,
        lora_default=("q_proj", "v_proj"),
        buffer_bytes=rotary_buffers,
        gqa=True,
    )
)
