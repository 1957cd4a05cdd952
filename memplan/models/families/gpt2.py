"""GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks whose linears are
transformers' Conv1D (weight stored (in, out); q, k and v fused in one `c_attn`), a GELU MLP
(`gelu_new` by default), dropout on the embeddings, attention probabilities and both residual
branches, and a head tied to the token embeddings.

GPT2Config names the common sizes n_embd, n_layer, n_head and n_positions (its
`attribute_map`); the family's `aliases` read them under those names."""

from __future__ import annotations

from typing import Any

from memplan.errors import MemplanError
from memplan.models.family import Family, register_family
from memplan.models.layout import Builder, ParamSpec
from memplan.models.registry import ModelConfig, int_key, opt_int

# activation_function values with a memory model (memplan.programs.gpt2): transformers'
# NewGELUActivation (composed elementwise ops), F.gelu (exact or tanh) and ReLU
ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu")


def config(d: dict[str, Any], where: str) -> dict[str, Any]:
    hidden, heads = int_key(d, "n_embd", where), int_key(d, "n_head", where)
    act = str(d.get("activation_function", "gelu_new"))
    if act not in ACTIVATIONS:
        raise MemplanError(
            f"{where}: activation_function '{act}' has no memory model; supported: "
            f"{', '.join(ACTIVATIONS)}"
        )
    if d.get("add_cross_attention"):
        raise MemplanError(
            f"{where}: add_cross_attention (an encoder-decoder GPT-2) is not supported; "
            "set it to false"
        )
    return {
        "num_kv_heads": heads,
        "head_dim": hidden // heads if heads else 0,
        "intermediate_size": opt_int(d, "n_inner", 4 * hidden, where),
        "hidden_act": act,
        "word_embed_proj_dim": hidden,
    }


def max_sequence(cfg: ModelConfig) -> int:
    """Learned positions: n_positions rows."""
    return cfg.max_position_embeddings


def _gpt2(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, inner = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    b = Builder()
    t = "transformer"
    b.add(f"{t}.wte.weight", (v, h), None, "embed")
    b.add(f"{t}.wpe.weight", (cfg.max_position_embeddings, h), None, "pos_embed")

    def conv1d(name: str, n_in: int, n_out: int, i: int, role: str) -> None:
        b.add(f"{name}.weight", (n_in, n_out), i, role)  # Conv1D: (nx, nf)
        b.add(f"{name}.bias", (n_out,), i, role)

    for i in range(cfg.num_layers):
        p = f"{t}.h.{i}"
        b.layer_norm(f"{p}.ln_1", h, i)
        conv1d(f"{p}.attn.c_attn", h, 3 * h, i, "attn")
        conv1d(f"{p}.attn.c_proj", h, h, i, "attn")
        b.layer_norm(f"{p}.ln_2", h, i)
        conv1d(f"{p}.mlp.c_fc", h, inner, i, "mlp")
        conv1d(f"{p}.mlp.c_proj", inner, h, i, "mlp")
    b.layer_norm(f"{t}.ln_f", h, None)
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


FAMILY = register_family(
    Family(
        "gpt2",
        {"gpt2": "GPT2LMHeadModel"},
        ("n_embd", "n_layer", "n_head", "vocab_size"),
        config,
        _gpt2,
        max_position_default={"gpt2": 1024},
        tie_default={"gpt2": True},
        linears=("c_attn", "c_proj", "c_fc"),
        lora_default=("c_attn",),  # peft's default target for gpt2
        max_sequence=max_sequence,
        aliases={
            "hidden_size": "n_embd",
            "num_hidden_layers": "n_layer",
            "num_attention_heads": "n_head",
            "max_position_embeddings": "n_positions",
        },
        conv1d=True,
    )
)
