"""Gemma (GemmaForCausalLM) and Gemma-2 (Gemma2ForCausalLM): LLaMA-style decoders with
RMSNorms scaled by (1 + weight), embeddings multiplied by sqrt(hidden_size), a GeGLU MLP
(tanh-approximated GELU), head_dim 256 by default and the head tied to the embeddings.
Gemma-2 adds a norm after the attention and around the MLP (four per layer), attention-logit
and final-logit soft-capping, `query_pre_attn_scalar` and alternating sliding-window layers."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.families.llama import LINEARS, decoder_layout, rotary_buffers
from memplan.models.families.llama import config as llama_config
from memplan.models.family import DECODER_SIZES, Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig, opt_int

# activations whose memory is one GELU op saving its input (nn.functional.gelu, either form)
GELUS = ("gelu", "gelu_pytorch_tanh")


def _activation(d: dict[str, Any], key: str, where: str) -> str:
    act = str(d.get(key) or "gelu_pytorch_tanh")
    if act not in GELUS:
        raise MemplanError(
            f"{where}: {key} '{act}' has no memory model for Gemma (supported: "
            f"{', '.join(GELUS)}); fix the config"
        )
    return act


def gemma_config(d: dict[str, Any], where: str) -> dict[str, Any]:
    """LLaMA's keys; GemmaConfig's head_dim defaults to 256; GemmaMLP reads `hidden_act`
    (its legacy "gelu" means the tanh approximation)."""
    return {
        **llama_config(d, where),
        "head_dim": opt_int(d, "head_dim", 256, where),
        "hidden_act": _activation(d, "hidden_act", where),
    }


def gemma2_config(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Gemma's, but Gemma2MLP reads `hidden_activation`."""
    return {
        **llama_config(d, where),
        "head_dim": opt_int(d, "head_dim", 256, where),
        "hidden_act": _activation(d, "hidden_activation", where),
    }


def buffers(cfg: ModelConfig) -> int:
    """Rotary inv_freq + original_inv_freq (fp32) and the embedding's scalar `embed_scale`."""
    return rotary_buffers(cfg) + 4


def _gemma(cfg: ModelConfig) -> list[ParamSpec]:
    bias = bool(cfg.raw.get("attention_bias", False))
    return decoder_layout(cfg, qkv_bias=bias, o_bias=bias)


def _gemma2(cfg: ModelConfig) -> list[ParamSpec]:
    """Embeddings; per layer q/k/v/o, the MLP and four RMSNorms (input, post-attention,
    pre- and post-feedforward: Gemma2DecoderLayer's registration order); the final norm; the
    head unless tied."""
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    bias = bool(cfg.raw.get("attention_bias", False))
    b = Builder()
    b.add("model.embed_tokens.weight", (v, h), None, "embed")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        b.linear(f"{p}.self_attn.q_proj", h, q_out, bias, i, "attn")
        b.linear(f"{p}.self_attn.k_proj", h, kv_out, bias, i, "attn")
        b.linear(f"{p}.self_attn.v_proj", h, kv_out, bias, i, "attn")
        b.linear(f"{p}.self_attn.o_proj", q_out, h, bias, i, "attn")
        b.linear(f"{p}.mlp.gate_proj", h, inter, False, i, "mlp")
        b.linear(f"{p}.mlp.up_proj", h, inter, False, i, "mlp")
        b.linear(f"{p}.mlp.down_proj", inter, h, False, i, "mlp")
        for norm in ("input", "post_attention", "pre_feedforward", "post_feedforward"):
            b.add(f"{p}.{norm}_layernorm.weight", (h,), i, "norm")
    b.add("model.norm.weight", (h,), None, "norm")
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


GEMMA = register_family(
    Family(
        "gemma",
        {"gemma": "GemmaForCausalLM"},
        DECODER_SIZES,
        gemma_config,
        _gemma,
        max_position_default={"gemma": 8192},
        tie_default={"gemma": True},
        linears=LINEARS,
        lora_default=("q_proj", "v_proj"),
        buffer_bytes=buffers,
        gqa=True,
    )
)

GEMMA2 = register_family(
    Family(
        "gemma2",
        {"gemma2": "Gemma2ForCausalLM"},
        DECODER_SIZES,
        gemma2_config,
        _gemma2,
        max_position_default={"gemma2": 8192},
        tie_default={"gemma2": True},
        linears=LINEARS,
        lora_default=("q_proj", "v_proj"),
        buffer_bytes=buffers,
        gqa=True,
        # Gemma2PreTrainedModel._supports_sdpa is False (attention-logit soft-capping)
        sdpa=False,
    )
)
