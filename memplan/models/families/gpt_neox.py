"""GPT-NeoX and Pythia (GPTNeoXForCausalLM): LayerNorm, a fused query/key/value projection with
biases, partial rotary positions (rotary_pct of each head), a GELU MLP with biases, the parallel
residual (x + attn(ln1(x)) + mlp(ln2(x))) unless `use_parallel_residual` is false, an untied
head unless the config ties it."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.family import Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig, int_key


def rotary_fraction(d: dict[str, Any], where: str) -> float:
    """The fraction of each head that gets the rotary embedding: `rope_parameters`'
    partial_rotary_factor (configs saved by transformers 5), else `rotary_pct` (0.25 when
    absent, GPTNeoXConfig's default)."""
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    value = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    if value is None:
        value = d.get("rotary_pct", 0.25)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise MemplanError(
            f"{where}: 'rotary_pct' must be in (0, 1], got {value!r}; fix the config"
        )
    return float(value)


def rotary_ndims(cfg: ModelConfig) -> int:
    """Rotary dimensions per head: int(head_dim * rotary_pct), as GPTNeoXAttention computes
    them (the rotary embedding's cos/sin have as many)."""
    return int(cfg.head_dim * rotary_fraction(cfg.raw, f"model '{cfg.name}'"))


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    hidden, heads = int_key(d, "hidden_size", where), int_key(d, "num_attention_heads", where)
    head_dim = hidden // heads if heads else 0
    rot = int(head_dim * rotary_fraction(d, where))
    if head_dim and (rot < 2 or rot % 2):
        raise MemplanError(
            f"{where}: rotary_pct gives {rot} rotary dimensions per head (head size "
            f"{head_dim}); it must be a positive even number; fix the config"
        )
    return {
        "num_kv_heads": heads,
        "head_dim": head_dim,
        "intermediate_size": int_key(d, "intermediate_size", where),
        "hidden_act": str(d.get("hidden_act", "gelu")),
        "word_embed_proj_dim": hidden,
    }


def rotary_buffers(cfg: ModelConfig) -> int:
    """GPTNeoXRotaryEmbedding's inv_freq + original_inv_freq (rotary_ndims / 2 each), fp32."""
    return 2 * (rotary_ndims(cfg) // 2) * 4


def _gpt_neox(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    # `attention_bias`: on query_key_value and dense; the MLP always has biases
    bias = bool(cfg.raw.get("attention_bias", True))
    b = Builder()
    b.add("gpt_neox.embed_in.weight", (v, h), None, "embed")
    for i in range(cfg.num_layers):
        p = f"gpt_neox.layers.{i}"
        b.layer_norm(f"{p}.input_layernorm", h, i)
        b.layer_norm(f"{p}.post_attention_layernorm", h, i)
        b.linear(f"{p}.attention.query_key_value", h, 3 * h, bias, i, "attn")
        b.linear(f"{p}.attention.dense", h, h, bias, i, "attn")
        b.linear(f"{p}.mlp.dense_h_to_4h", h, inter, True, i, "mlp")
        b.linear(f"{p}.mlp.dense_4h_to_h", inter, h, True, i, "mlp")
    b.layer_norm("gpt_neox.final_layer_norm", h, None)
    if not cfg.tie_word_embeddings:  # transformers 5 names the head lm_head (4.x: embed_out)
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


FAMILY = register_family(
    Family(
        "gpt_neox",
        {"gpt_neox": "GPTNeoXForCausalLM"},
        (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        ),
        config,
        _gpt_neox,
        max_position_default={"gpt_neox": 2048},
        tie_default={"gpt_neox": False},
        linears=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        lora_default=("query_key_value",),
        buffer_bytes=rotary_buffers,
    )
)
