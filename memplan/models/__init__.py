"""Model presets, config loading and the exact parameter layout (no torch at import).

`memplan.models.hf` builds the real Hugging Face model; import it explicitly (it needs torch).
"""

# isort: off
from memplan.models.family import Family, get_family, register_family, registered_families
from memplan.models.registry import (
    PRESETS,
    ModelConfig,
    config_from_dict,
    load_config,
    preset_names,
)
from memplan.models.layout import ModelLayout, ParamSpec, layout
from memplan.models import families as _builtin  # noqa: F401  (registers the families)
from memplan.models.limits import buffer_bytes, check_sequence, max_sequence
# isort: on

__all__ = [
    "PRESETS",
    "Family",
    "get_family",
    "register_family",
    "registered_families",
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
