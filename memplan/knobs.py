"""Command-line knobs declared once, as data (no torch, no typer): the workload's
(`memplan.workload.WORKLOAD_KNOBS`) and each settings group's (`memplan.methods.base`). The CLI
builds every command's options from these declarations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    """One command-line knob: `--name` (underscores as dashes) plus `aliases`, its type, default
    and help. `field`: the settings field it sets (default: `name`); `parse`: text -> value for
    knobs whose type is not a plain int/float/str/bool (e.g. a comma-separated list)."""

    name: str
    type: type
    default: Any
    help: str
    aliases: tuple[str, ...] = ()
    field: str | None = None
    parse: Callable[[Any], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def target(self) -> str:
        return self.field or self.name
