"""Model families as data: one `Family` per architecture, registered by its module in
`memplan.models.families` (no torch).

A family names the Hugging Face `model_type`s it covers and the class memplan trains for each,
the config keys it requires, how it reads the rest of a config.json into a `ModelConfig`
(`config`), its exact parameter layout (`layout`), its registered buffers and learned-position
limit, and what the methods need to know about it (the per-layer linears LoRA can target and
its default targets, whether peft's causal-LM prompt learning applies). The estimator's forward
program of a family lives a layer up, in `memplan.programs`, under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # hints only: the family modules import these, not this module
    from memplan.models.layout import ParamSpec
    from memplan.models.registry import ModelConfig


# the sizes a LLaMA-style config.json states (HF key names): most families require these
DECODER_SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


def _no_buffers(cfg: ModelConfig) -> int:
    return 0


def _no_limit(cfg: ModelConfig) -> int | None:
    return None


@dataclass(frozen=True)
class Family:
    """One architecture family.

    - `classes`: model_type -> the transformers class memplan trains (e.g. LlamaForCausalLM);
    - `required`: config.json keys every config must state;
    - `config(d, where) -> dict`: the ModelConfig fields beyond the common ones (num_kv_heads,
      head_dim, intermediate_size, hidden_act, ...), read and validated from the dict `d`;
    - `max_position_default` / `tie_default`: transformers' defaults by model_type when a
      config leaves max_position_embeddings / tie_word_embeddings out;
    - `layout(cfg)`: every parameter, as `model.named_parameters()` yields them;
    - `buffer_bytes(cfg)`: registered buffers; `max_sequence(cfg)`: learned-position limit;
    - `linears`: per-layer linear names (LoRA targets); `lora_default`: the default targets;
    - `causal_lm`: trained as a causal LM (peft's prompt learning needs that task type);
    - `gqa`: grouped-query attention or a custom head_dim allowed;
    - `aliases`: common config key -> the key this family's config.json uses for it (GPT-2's
      n_embd for hidden_size, as transformers' `attribute_map` does);
    - `conv1d`: the per-layer linears are transformers' Conv1D, weight stored (in, out);
    - `sdpa`: transformers runs the model under SDPA (`_supports_sdpa`); when False only
      `--attn eager` builds it.
    """

    name: str
    classes: dict[str, str]
    required: tuple[str, ...]
    config: Callable[[dict[str, Any], str], dict[str, Any]]
    layout: Callable[[ModelConfig], list[ParamSpec]]
    max_position_default: dict[str, int]
    tie_default: dict[str, bool]
    linears: tuple[str, ...]
    lora_default: tuple[str, ...]
    buffer_bytes: Callable[[ModelConfig], int] = _no_buffers
    max_sequence: Callable[[ModelConfig], int | None] = _no_limit
    causal_lm: bool = True
    gqa: bool = False
    aliases: dict[str, str] = field(default_factory=dict)
    conv1d: bool = False
    sdpa: bool = True

    def key(self, name: str) -> str:
        """The config.json key this family uses for the common key `name`."""
        return self.aliases.get(name, name)

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.classes)


_FAMILIES: dict[str, Family] = {}
_BY_TYPE: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family (a model_type already covered by another family is an error)."""
    taken = [t for t in family.classes if t in _BY_TYPE and _BY_TYPE[t].name != family.name]
    if taken:
        raise ValueError(f"model_type(s) already covered: {', '.join(taken)}")
    _FAMILIES[family.name] = family
    for t in family.classes:
        _BY_TYPE[t] = family
    return family


def registered_families() -> list[Family]:
    return list(_FAMILIES.values())


def get_family(name: str) -> Family | None:
    return _FAMILIES.get(name)


def family_of_type(model_type: str) -> Family | None:
    return _BY_TYPE.get(model_type)


def model_types() -> list[str]:
    return list(_BY_TYPE)
