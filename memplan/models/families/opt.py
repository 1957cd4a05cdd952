"""OPT (OPTForCausalLM): learned positions offset by 2, pre- or post-LayerNorm, ReLU FFN,
optional project_in/out around narrower word embeddings, a tied head."""

from __future__ import annotations

from typing import Any

from memplan.models.family import Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig, int_key, opt_int


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    hidden, heads = int_key(d, "hidden_size", where), int_key(d, "num_attention_heads", where)
    return {
        "num_kv_heads": heads,
        "head_dim": hidden // heads if heads else 0,
        "intermediate_size": int_key(d, "ffn_dim", where),
        "hidden_act": str(d.get("activation_function", "relu")),
        "word_embed_proj_dim": opt_int(d, "word_embed_proj_dim", hidden, where),
        "do_layer_norm_before": bool(d.get("do_layer_norm_before", True)),
        "enable_bias": bool(d.get("enable_bias", True)),
    }


def max_sequence(cfg: ModelConfig) -> int:
    """Positions are offset by 2 inside an embedding of max_position_embeddings + 2 rows."""
    return cfg.max_position_embeddings


def _opt(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, ffn, proj = (
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.intermediate_size,
        cfg.word_embed_proj_dim,
    )
    bias = cfg.enable_bias
    affine = bool(cfg.raw.get("layer_norm_elementwise_affine", True))
    b = Builder()
    d = "model.decoder"
    b.add(f"{d}.embed_tokens.weight", (v, proj), None, "embed")
    # OPTLearnedPositionalEmbedding keeps 2 extra rows (positions are offset by 2)
    b.add(f"{d}.embed_positions.weight", (cfg.max_position_embeddings + 2, h), None, "pos_embed")
    if proj != h:
        b.linear(f"{d}.project_out", h, proj, False, None, "head")
        b.linear(f"{d}.project_in", proj, h, False, None, "head")
    if cfg.do_layer_norm_before and not cfg.raw.get("_remove_final_layer_norm", False):
        b.layer_norm(f"{d}.final_layer_norm", h, None, affine)  # registered before the layers
    for i in range(cfg.num_layers):
        p = f"{d}.layers.{i}"
        for proj_name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            b.linear(f"{p}.self_attn.{proj_name}", h, h, bias, i, "attn")
        b.layer_norm(f"{p}.self_attn_layer_norm", h, i, affine)
        b.linear(f"{p}.fc1", h, ffn, bias, i, "mlp")
        b.linear(f"{p}.fc2", ffn, h, bias, i, "mlp")
        b.layer_norm(f"{p}.final_layer_norm", h, i, affine)
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, proj), None, "head")
    return b.params


FAMILY = register_family(
    Family(
        "opt",
        {"opt": "OPTForCausalLM"},
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "vocab_size"),
        config,
        _opt,
        max_position_default={"opt": 2048},
        tie_default={"opt": True},
        linears=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        lora_default=("q_proj", "v_proj"),
        max_sequence=max_sequence,
    )
)
