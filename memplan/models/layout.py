"""The exact parameter layout of the Hugging Face training model, from the config alone.

`layout(cfg)` lists every parameter that `model.named_parameters()` yields for the model memplan
trains (each family's module in memplan.models.families writes its own with `Builder`), with the
same names, shapes and order; tied parameters appear once, under the name HF keeps. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from memplan.errors import MemplanError
from memplan.models.family import get_family
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


class Builder:
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


def layout(cfg: ModelConfig) -> ModelLayout:
    """Every parameter of the training model `cfg` describes (see the module docstring): its
    family's layout (memplan.models.families)."""
    return ModelLayout(cfg, get_family(cfg.family).layout(cfg))
