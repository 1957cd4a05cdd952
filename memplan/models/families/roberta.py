"""RoBERTa (RobertaForMaskedLM): a post-LayerNorm encoder with learned and token-type
embeddings and an MLM head tied to the word embeddings."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.family import DECODER_SIZES, Family, register_family
from memplan.models.layout import Builder, ParamSpec, transformers_major
from memplan.models.registry import ModelConfig, int_key, opt_int


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    if d.get("add_cross_attention") or d.get("is_decoder"):
        raise MemplanError(
            f"{where}: RoBERTa as a decoder (is_decoder / add_cross_attention) is not supported; "
            "memplan trains RobertaForMaskedLM: set both to false"
        )
    hidden, heads = int_key(d, "hidden_size", where), int_key(d, "num_attention_heads", where)
    return {
        "num_kv_heads": heads,
        "head_dim": hidden // heads if heads else 0,
        "intermediate_size": int_key(d, "intermediate_size", where),
        "hidden_act": str(d.get("hidden_act", "gelu")),
        "word_embed_proj_dim": hidden,
        "type_vocab_size": opt_int(d, "type_vocab_size", 2, where),
    }


def buffer_bytes(cfg: ModelConfig) -> int:
    """position_ids + token_type_ids, int64."""
    return 2 * cfg.max_position_embeddings * 8


def max_sequence(cfg: ModelConfig) -> int:
    """Positions start at padding_idx + 1 = 2 inside max_position_embeddings rows."""
    return cfg.max_position_embeddings - 2


def _roberta(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    v5 = transformers_major() >= 5
    b = Builder()
    e = "roberta.embeddings"
    b.add(f"{e}.word_embeddings.weight", (v, h), None, "embed")
    if not v5:  # 4.x registers position_embeddings second (re-assigned later, same slot)
        b.add(
            f"{e}.position_embeddings.weight", (cfg.max_position_embeddings, h), None, "pos_embed"
        )
    b.add(f"{e}.token_type_embeddings.weight", (cfg.type_vocab_size, h), None, "type_embed")
    b.layer_norm(f"{e}.LayerNorm", h, None)
    if v5:
        b.add(
            f"{e}.position_embeddings.weight", (cfg.max_position_embeddings, h), None, "pos_embed"
        )
    for i in range(cfg.num_layers):
        p = f"roberta.encoder.layer.{i}"
        for proj_name in ("query", "key", "value"):
            b.linear(f"{p}.attention.self.{proj_name}", h, h, True, i, "attn")
        b.linear(f"{p}.attention.output.dense", h, h, True, i, "attn")
        b.layer_norm(f"{p}.attention.output.LayerNorm", h, i)
        b.linear(f"{p}.intermediate.dense", h, inter, True, i, "mlp")
        b.linear(f"{p}.output.dense", inter, h, True, i, "mlp")
        b.layer_norm(f"{p}.output.LayerNorm", h, i)
    # RobertaForMaskedLM: no pooler. lm_head's own `bias` is registered before its submodules;
    # the decoder's weight is tied to the word embeddings and its bias to lm_head.bias
    b.add("lm_head.bias", (v,), None, "head")
    b.linear("lm_head.dense", h, h, True, None, "head")
    b.layer_norm("lm_head.layer_norm", h, None)
    if not cfg.tie_word_embeddings:
        # 5.x ties the decoder bias only together with the embeddings; 4.x always ties it
        b.linear("lm_head.decoder", h, v, v5, None, "head")
    return b.params


FAMILY = register_family(
    Family(
        "roberta",
        {"roberta": "RobertaForMaskedLM"},
        DECODER_SIZES,
        config,
        _roberta,
        max_position_default={"roberta": 512},
        tie_default={"roberta": True},
        linears=("query", "key", "value"),
        lora_default=("query", "value"),
        buffer_bytes=buffer_bytes,
        max_sequence=max_sequence,
        causal_lm=False,
    )
)
