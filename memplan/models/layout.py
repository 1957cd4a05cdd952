"""The exact parameter layout of the Hugging Face training model, from the config alone.

`layout(cfg)` lists every parameter that `model.named_parameters()` yields for the model memplan
trains (LlamaForCausalLM / MistralForCausalLM, OPTForCausalLM, RobertaForMaskedLM), with the
same names, shapes and order; tied parameters appear once, under the name HF keeps. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from memplan.errors import MemplanError
from memplan.models.registry import ModelConfig

ROLES = ("embed", "pos_embed", "type_embed", "attn", "mlp", "norm", "head")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: HF name, shape, decoder/encoder layer (None outside layers), role."""

    name: str
    shape: tuple[int, ...]
    layer: int | None
    role: str  # one of ROLES

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_matrix_2d_linear(self) -> bool:
        """A 2-D weight of an attention or MLP linear layer: what GaLore projects."""
        return self.role in ("attn", "mlp") and len(self.shape) == 2


@dataclass
class ModelLayout:
    config: ModelConfig
    params: list[ParamSpec]

    @property
    def n_params(self) -> int:
        return sum(p.numel for p in self.params)

    def named_shapes(self) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape for p in self.params}

    def _check_layer(self, i: int) -> None:
        n = self.config.num_layers
        if not 0 <= i < n:
            raise MemplanError(
                f"layer {i} is out of range: {self.config.name} has layers 0..{n - 1}"
            )

    def layer_params(self, i: int) -> list[ParamSpec]:
        self._check_layer(i)
        return [p for p in self.params if p.layer == i]

    def non_layer_params(self) -> list[ParamSpec]:
        """Embeddings, final norm and head: everything outside the repeated layers."""
        return [p for p in self.params if p.layer is None]

    def layer_numel(self, i: int) -> int:
        return sum(p.numel for p in self.layer_params(i))

    def largest(self) -> ParamSpec:
        """The largest single tensor (the first one in order on a tie)."""
        return max(self.params, key=lambda p: p.numel)

    def numel_by_role(self) -> dict[str, int]:
        out = dict.fromkeys(ROLES, 0)
        for p in self.params:
            out[p.role] += p.numel
        return out


@lru_cache(maxsize=1)
def transformers_major() -> int:
    """Major version of the installed transformers (read from metadata, not imported); 5 if absent.

    Two RoBERTa details differ between 4.x and 5.x: the order of the embedding parameters, and
    whether an untied MLM decoder keeps its own bias.
    """
    from importlib import metadata

    try:
        return int(metadata.version("transformers").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 5


class _Builder:
    def __init__(self) -> None:
        self.params: list[ParamSpec] = []

    def add(self, name: str, shape: tuple[int, ...], layer: int | None, role: str) -> None:
        self.params.append(ParamSpec(name, tuple(shape), layer, role))

    def linear(
        self, name: str, n_in: int, n_out: int, bias: bool, layer: int | None, role: str
    ) -> None:
        self.add(f"{name}.weight", (n_out, n_in), layer, role)
        if bias:
            self.add(f"{name}.bias", (n_out,), layer, role)

    def layer_norm(self, name: str, dim: int, layer: int | None, affine: bool = True) -> None:
        if affine:
            self.add(f"{name}.weight", (dim,), layer, "norm")
            self.add(f"{name}.bias", (dim,), layer, "norm")


def _llama(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    # MistralAttention / MistralMLP have no bias switches; Llama's follow attention_bias/mlp_bias
    llama = cfg.model_type == "llama"
    attn_bias = llama and bool(cfg.raw.get("attention_bias", False))
    mlp_bias = llama and bool(cfg.raw.get("mlp_bias", False))
    b = _Builder()
    b.add("model.embed_tokens.weight", (v, h), None, "embed")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        b.linear(f"{p}.self_attn.q_proj", h, q_out, attn_bias, i, "attn")
        b.linear(f"{p}.self_attn.k_proj", h, kv_out, attn_bias, i, "attn")
        b.linear(f"{p}.self_attn.v_proj", h, kv_out, attn_bias, i, "attn")
        b.linear(f"{p}.self_attn.o_proj", q_out, h, attn_bias, i, "attn")
        b.linear(f"{p}.mlp.gate_proj", h, inter, mlp_bias, i, "mlp")
        b.linear(f"{p}.mlp.up_proj", h, inter, mlp_bias, i, "mlp")
        b.linear(f"{p}.mlp.down_proj", inter, h, mlp_bias, i, "mlp")
        b.add(f"{p}.input_layernorm.weight", (h,), i, "norm")
        b.add(f"{p}.post_attention_layernorm.weight", (h,), i, "norm")
    b.add("model.norm.weight", (h,), None, "norm")
    if not cfg.tie_word_embeddings:
        b.add("lm_head.weight", (v, h), None, "head")
    return b.params


def _opt(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, ffn, proj = (
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.intermediate_size,
        cfg.word_embed_proj_dim,
    )
    bias = cfg.enable_bias
    affine = bool(cfg.raw.get("layer_norm_elementwise_affine", True))
    b = _Builder()
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


def _roberta(cfg: ModelConfig) -> list[ParamSpec]:
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    v5 = transformers_major() >= 5
    b = _Builder()
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


_FAMILY_LAYOUTS = {"llama": _llama, "opt": _opt, "roberta": _roberta}


def layout(cfg: ModelConfig) -> ModelLayout:
    """Every parameter of the training model `cfg` describes (see the module docstring)."""
    return ModelLayout(cfg, _FAMILY_LAYOUTS[cfg.family](cfg))
