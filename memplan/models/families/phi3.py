"""Phi-3 (Phi3ForCausalLM): the LLaMA decoder with one fused query/key/value projection
(`qkv_proj`, hidden -> (heads + 2 kv heads) * head_dim) and one fused gate/up projection
(`gate_up_proj`, hidden -> 2 * intermediate), no biases, RMSNorm, rotary positions on
partial_rotary_factor of each head (1 in the released configs; longrope scaling changes the
frequencies, not the buffers), an untied head unless the config ties it."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.families.llama import config as llama_config
from memplan.models.family import DECODER_SIZES, Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig


def rotary_fraction(d: dict[str, Any], where: str) -> float:
    """Phi3Config's partial_rotary_factor: the one in `rope_parameters` / `rope_scaling` when
    it states one, else the top-level key, else 1."""
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    value = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    if value is None:
        value = d.get("partial_rotary_factor", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise MemplanError(
            f"{where}: 'partial_rotary_factor' must be in (0, 1], got {value!r}; fix the config"
        )
    return float(value)


def rotary_ndims(cfg: ModelConfig) -> int:
    """Rotary dimensions per head: int(head_dim * partial_rotary_factor), as
    Phi3RotaryEmbedding computes them (cos/sin have as many)."""
    return int(cfg.head_dim * rotary_fraction(cfg.raw, f"model '{cfg.name}'"))


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    out = llama_config(d, where)
    rot = int(out["head_dim"] * rotary_fraction(d, where))
    if out["head_dim"] and (rot < 2 or rot % 2):
        raise MemplanError(
            f"{where}: partial_rotary_factor gives {rot} rotary dimensions per head (head size "
            f"{out['head_dim']}); it must be a positive even number; fix the config"
        )
    return out


def rotary_buffers(cfg: ModelConfig) -> int:
    """Phi3RotaryEmbedding's inv_freq + original_inv_freq (rotary_ndims / 2 each), fp32."""
    return 2 * (rotary_ndims(cfg) // 2) * 4


def _phi3(cfg: ModelConfig) -> list[ParamSpec]:
    """Embeddings; per layer o_proj, qkv_proj, gate_up_proj, down_proj and two RMSNorms (the
    registration order of Phi3Attention / Phi3MLP); the final norm; the head unless tied."""
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    b = Builder()
    b.add("model.embed_tokens.weight", (v, h), None, "embed")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        b.linear(f"{p}.self_attn.o_proj", q_out, h, False, i, "attn")
        b.linear(f"{p}.self_attn.qkv_proj", h, q_out + 2 * kv_out, False, i, "attn")
        b.linear(f"{p}.mlp.gate_up_proj", h, 2 * inter, False, i, "mlp")
        b.linear(f"{p}.mlp.down_proj", inter, h, False, i, "mlp")
        b.add(f"{p}.input_layernorm.weight", (h,), i, "norm")
        b.add(f"{p}.post_attention_layernorm.weight", (h,), i, "norm")
    b.add("model.norm.weight", (h,), None, "norm")
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


FAMILY = register_family(
    Family(
        "phi3",
        {"phi3": "Phi3ForCausalLM"},
        DECODER_SIZES,
        config,
        _phi3,
        max_position_default={"phi3": 4096},
        tie_default={"phi3": False},
        linears=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        # peft names no default for phi3; the fused projection holding its q/v default
        lora_default=("qkv_proj",),
        buffer_bytes=rotary_buffers,
        gqa=True,
    )
)
