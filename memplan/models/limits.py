"""Per-family facts about a model that are neither parameters nor activations: registered
buffers, and the longest sequence a learned-position model accepts (no torch)."""

from __future__ import annotations

from memplan.errors import MemplanError
from memplan.models.registry import ModelConfig


def buffer_bytes(cfg: ModelConfig) -> int:
    """Registered buffers of the HF model (fp32/int64 regardless of the weight dtype)."""
    if cfg.family == "llama":
        return 2 * (cfg.head_dim // 2) * 4  # rotary inv_freq + original_inv_freq, fp32
    if cfg.family == "roberta":
        return 2 * cfg.max_position_embeddings * 8  # position_ids + token_type_ids, int64
    return 0


def max_sequence(cfg: ModelConfig) -> int | None:
    """Longest sequence a model with learned positions accepts (None: rotary, no hard limit).
    OPT offsets positions by 2 inside an embedding of max_position_embeddings + 2 rows;
    RoBERTa's positions start at padding_idx + 1 = 2 inside max_position_embeddings rows."""
    if cfg.family == "opt":
        return cfg.max_position_embeddings
    if cfg.family == "roberta":
        return cfg.max_position_embeddings - 2
    return None


def check_sequence(cfg: ModelConfig, seq: int) -> None:
    limit = max_sequence(cfg)
    if limit is not None and seq > limit:
        raise MemplanError(
            f"{cfg.name} has learned positions for at most {limit} tokens "
            f"(max_position_embeddings {cfg.max_position_embeddings}); use --seq {limit} or less"
        )
