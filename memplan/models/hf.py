"""Build the Hugging Face training model for a ModelConfig, offline (torch imported lazily).

Never imported by the analytic path (registry, layout, estimate).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from memplan.errors import MemplanError
from memplan.models.family import get_family
from memplan.models.layout import transformers_major
from memplan.models.registry import ModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

# config.json keys that are metadata, not architecture; dtype is chosen by build_model
_DROP = ("model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path")


def model_class_name(cfg: ModelConfig) -> str:
    """The transformers class memplan trains for this config."""
    return get_family(cfg.family).classes[cfg.model_type]


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' config warnings (e.g. GaLore's pad_token_id -1) while building."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def check_attention(cfg: ModelConfig, attn_implementation: str) -> None:
    """Refuse an attention implementation transformers does not run for this family."""
    if attn_implementation == "sdpa" and not get_family(cfg.family).sdpa:
        raise MemplanError(
            f"{cfg.name}: transformers has no SDPA attention for model_type "
            f"'{cfg.model_type}'; use --attn eager"
        )


def hf_config(cfg: ModelConfig, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """A transformers config built locally from `cfg.raw` (no network), set up for training."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {k: v for k, v in cfg.raw.items() if k not in _DROP}
    # LLaMA-1 era configs (GaLore's) give max_sequence_length only: use the normalized value
    kwargs.setdefault("max_position_embeddings", cfg.max_position_embeddings)
    kwargs["use_cache"] = False
    try:
        with _quiet_transformers():
            conf = AutoConfig.for_model(
                cfg.model_type, attn_implementation=attn_implementation, **kwargs
            )
    except (ValueError, TypeError) as e:
        msg = " ".join(str(e).split())
        raise MemplanError(
            f"transformers rejects the config of {cfg.name}: {msg}; fix the config.json"
        ) from e
    conf.use_cache = False
    return conf


def _init_std(cfg: ModelConfig) -> float:
    raw = cfg.raw
    std = raw.get("initializer_range", raw.get("init_std", 0.02))
    return float(std) if isinstance(std, (int, float)) and std > 0 else 0.02


def _no_init_weights():
    """transformers' context that skips weight init (5.x: transformers.initialization)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return None
    return no_init_weights()


def build_model(
    cfg: ModelConfig,
    device: str = "meta",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> torch.nn.Module:
    """The training model (see `model_class_name`) on `device`, parameters in `dtype` (fp32).

    On "meta" nothing is materialized. Elsewhere weights are random: transformers' own
    initialization is skipped (it costs seconds per 100M parameters on CPU) and replaced by
    one cheap pass: matrices ~ N(0, initializer_range), norm weights 1, biases 0.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    dtype = dtype or torch.float32
    check_attention(cfg, attn_implementation)
    conf = hf_config(cfg, attn_implementation)
    auto = AutoModelForMaskedLM if cfg.family == "roberta" else AutoModelForCausalLM
    on_meta = torch.device(device).type == "meta"
    skip_init = None if on_meta else _no_init_weights()
    # transformers 5 names it dtype; 4.x torch_dtype
    dtype_kw = {"dtype": dtype} if transformers_major() >= 5 else {"torch_dtype": dtype}
    with _quiet_transformers(), torch.device(device), skip_init or contextlib.nullcontext():
        model = auto.from_config(conf, attn_implementation=attn_implementation, **dtype_kw)
    if skip_init is not None:
        model.tie_weights()  # tying happens inside init_weights, which was skipped
        _cheap_init(model, _init_std(cfg))
    model.config.use_cache = False
    model.train()
    return model


def _cheap_init(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    import torch

    params = list(model.parameters())  # tied parameters once
    if not params:
        return
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std, generator=gen)
            elif name.endswith("weight"):
                p.fill_(1.0)  # LayerNorm / RMSNorm scales
            else:
                p.zero_()
