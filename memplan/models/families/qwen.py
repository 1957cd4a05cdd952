"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM) and Qwen3 (Qwen3ForCausalLM): LLaMA-style decoders.
Qwen2 has biases on the q/k/v projections (none on o_proj or the MLP); Qwen3 has an RMSNorm
over each head of the queries and keys, an explicit head_dim and LLaMA's attention_bias switch.
Both tie the head to the embeddings in their small checkpoints (tie_word_embeddings)."""

from __future__ import annotations

from typing import Any

from memplan.models.families.llama import LINEARS, config, decoder_layout, rotary_buffers
from memplan.models.family import DECODER_SIZES, Family, register_family
from memplan.models.layout import ParamSpec
from memplan.models.registry import ModelConfig, opt_int


def qwen3_config(d: dict[str, Any], where: str) -> dict[str, Any]:
    """LLaMA's keys, but Qwen3Config's head_dim defaults to 128 (not hidden / heads)."""
    return {**config(d, where), "head_dim": opt_int(d, "head_dim", 128, where)}


def _qwen2(cfg: ModelConfig) -> list[ParamSpec]:
    return decoder_layout(cfg, qkv_bias=True)


def _qwen3(cfg: ModelConfig) -> list[ParamSpec]:
    bias = bool(cfg.raw.get("attention_bias", False))
    return decoder_layout(cfg, qkv_bias=bias, o_bias=bias, qk_norm=True)


QWEN2 = register_family(
    Family(
        "qwen2",
        {"qwen2": "Qwen2ForCausalLM"},
        DECODER_SIZES,
        config,
        _qwen2,
        max_position_default={"qwen2": 32768},
        tie_default={"qwen2": False},
        linears=LINEARS,
        lora_default=("q_proj", "v_proj"),
        buffer_bytes=rotary_buffers,
        gqa=True,
    )
)

QWEN3 = register_family(
    Family(
        "qwen3",
        {"qwen3": "Qwen3ForCausalLM"},
        DECODER_SIZES,
        qwen3_config,
        _qwen3,
        max_position_default={"qwen3": 32768},
        tie_default={"qwen3": False},
        linears=LINEARS,
        lora_default=("q_proj", "v_proj"),
        buffer_bytes=rotary_buffers,
        gqa=True,
    )
)
