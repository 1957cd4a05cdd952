"""Training methods: one module per method family, each registering its `MethodSpec`s (no
torch at import).

`memplan.methods.base` holds the registry (`register`, `get_method`, `methods`), the settings
groups and their command-line knobs; `memplan.methods.replay` what estimate functions build on;
`memplan.runtime` what runnable steps build on. Importing this package registers the built-in
methods, then any plugin (`MEMPLAN_PLUGINS`, entry points `memplan.methods`). A new method is
one module that calls `register(MethodSpec(...))`, plus its import below (docs/contributing.md).
"""

from __future__ import annotations

# built-in methods, in the order `memplan methods` lists them (each module registers itself)
# isort: off
from memplan.methods import fo, sgd_nesterov, zo, forward_grad  # noqa: F401
from memplan.methods import peft, galore, hybrid, inference  # noqa: F401

# isort: on
from memplan.methods.base import (
    Candidate,
    MethodSpec,
    SettingsGroup,
    check_knobs,
    default_options,
    get_method,
    load_plugins,
    method_knobs,
    methods,
    register,
    settings_groups,
    unregister,
    workload_knobs,
)

__all__ = [
    "Candidate",
    "MethodSpec",
    "SettingsGroup",
    "check_knobs",
    "default_options",
    "get_method",
    "load_plugins",
    "method_knobs",
    "methods",
    "register",
    "settings_groups",
    "unregister",
    "workload_knobs",
]
