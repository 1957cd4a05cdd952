"""Model presets, config loading and the exact parameter layout (no torch at import).

`memplan.models.hf` builds the real Hugging Face model; import it explicitly (it needs torch).
"""

from memplan.models.layout import ModelLayout, ParamSpec, layout
from memplan.models.limits import buffer_bytes, check_sequence, max_sequence
from memplan.models.registry import (
    PRESETS,
    ModelConfig,
    config_from_dict,
    load_config,
    preset_names,
)

__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelLayout",
    "ParamSpec",
    "buffer_bytes",
    "check_sequence",
    "config_from_dict",
    "layout",
    "load_config",
    "max_sequence",
    "preset_names",
]
