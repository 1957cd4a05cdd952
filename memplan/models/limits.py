"""Per-family facts about a model that are neither parameters nor activations: registered
buffers, and the longest sequence a learned-position model accepts (no torch). Each family
states them (memplan.models.families)."""

from __future__ import annotations

from memplan.errors import MemplanError
from memplan.models.family import get_family
from memplan.models.registry import ModelConfig


def buffer_bytes(cfg: ModelConfig) -> int:
    """Registered buffers of the HF model (fp32/int64 regardless of the weight dtype)."""
    return get_family(cfg.family).buffer_bytes(cfg)


def max_sequence(cfg: ModelConfig) -> int | None:
    """Longest sequence a model with learned positions accepts (None: rotary, no hard limit)."""
    return get_family(cfg.family).max_sequence(cfg)


def check_sequence(cfg: ModelConfig, seq: int) -> None:
    limit = max_sequence(cfg)
    if limit is not None and seq > limit:
        raise MemplanError(
            f"{cfg.name} has learned positions for at most {limit} tokens "
            f"(max_position_embeddings {cfg.max_position_embeddings}); use --seq {limit} or less"
        )
