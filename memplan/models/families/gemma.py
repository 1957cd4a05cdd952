"""Gemma (GemmaForCausalLM): a LLaMA-style decoder with RMSNorms scaled by (1 + weight),
embeddings multiplied by sqrt(hidden_size), a GeGLU MLP (tanh-approximated GELU), head_dim 256
by default and the head tied to the embeddings."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.families.llama import LINEARS, decoder_layout, rotary_buffers
from memplan.models.families.llama import config as llama_config
from memplan.models.family import DECODER_SIZES, Family, register_family
from memplan.models.layout import ParamSpec
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


def buffers(cfg: ModelConfig) -> int:
    """Rotary inv_freq + original_inv_freq (fp32) and the embedding's scalar `embed_scale`."""
    return rotary_buffers(cfg) + 4


def _gemma(cfg: ModelConfig) -> list[ParamSpec]:
    bias = bool(cfg.raw.get("attention_bias", False))
    return decoder_layout(cfg, qkv_bias=bias, o_bias=bias)


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
