"""The method registry: one `MethodSpec` per training method, read by every layer (no torch).

A method is one module that builds its spec and calls `register(spec)`: names and aliases, its
kind, the settings groups and command-line knobs it reads, its estimate function (a tape replay,
`memplan.methods.replay`), its runnable-step builder (`memplan.methods.runtime`), the devices it
can run on, the planner rows it offers and how to describe its result. `memplan.estimate`,
`memplan.measure`, `memplan.plan` and the CLI look methods up here and never test a name.

Settings groups (`SettingsGroup`) are the typed settings objects a method family reads from the
options dict (`options["zo"]`, `options["galore"]`, ...): each declares its command-line knobs
once (`Knob`), and the CLI builds every command's options from them.

Third-party methods register the same way: a module named in the `MEMPLAN_PLUGINS` environment
variable (comma separated) or an entry point of the group `memplan.methods` is imported after
the built-in methods (`load_plugins`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from memplan.errors import MemplanError, unknown
from memplan.knobs import Knob
from memplan.workload import DEVICES, WORKLOAD_KNOBS

KINDS = ("fo", "zo", "peft", "galore", "hybrid", "inference")
# planner tiers, best expected quality first (the ranked table's order)
TIERS = ("full first-order", "GaLore", "hybrid ZO/FO", "PEFT", "zeroth-order")


# ---- knobs and settings groups ------------------------------------------------------------------
@dataclass(frozen=True)
class SettingsGroup:
    """A settings dataclass read from `options[key]`, with the knobs that fill it."""

    key: str
    cls: type
    knobs: tuple[Knob, ...]

    def build(self, values: dict[str, Any]) -> Any:
        """The settings object from knob values by knob name (missing or None: the default)."""
        kw = {}
        for k in self.knobs:
            v = values.get(k.name)
            if v is None:
                continue
            kw[k.target] = k.parse(v) if k.parse is not None else v
        names = {f.name for f in fields(self.cls)}
        return self.cls(**{k: v for k, v in kw.items() if k in names})


# ---- planner rows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One planner row a method offers: `label`, its tier (`TIERS`), a one-line trade-off,
    the options it runs with (a factory: settings objects are built per plan), `order` within
    the tier, and whether it is ranked with and without activation checkpointing."""

    label: str
    tier: str
    note: str
    order: int = 0
    options: Callable[[], dict[str, Any]] = dict
    checkpointing_variants: bool = False


# ---- the method spec ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """Everything every layer needs to know about one method.

    - `estimate(builder)`: replays one step on the builder's tape (memplan.methods.replay);
    - `build(ctx) -> Step`: the runnable step (memplan.methods.runtime; torch imported lazily);
    - `settings`: the settings groups (option keys) it reads; `knobs`: the command-line knobs
      that apply to it (the groups' knobs it uses and workload knobs such as optimizer_impl);
    - `drives(options)`: the methods it runs inside (lora -> its --optimizer, hybrid -> --fo
      and --zo): their knobs and device needs apply too;
    - `devices`: where it can be measured (`device_hint` says why not elsewhere);
    - `candidates`: the planner rows it offers;
    - `step_kinds(options)`: for methods whose steps differ (GaLore's ordinary and projector
      refresh steps), (info prefix, {kind: options}) to estimate apart, the worse reported;
    - `describe(info)`: extra lines for the rendered report;
    - `model`: kind-specific data (a first-order method's optimizer model, a ZO update rule).
    """

    name: str
    kind: str
    summary: str
    estimate: Callable[[Any], None]
    build: Callable[[Any], Any]
    aliases: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    knobs: tuple[str, ...] = ()
    drives: Callable[[dict[str, Any]], tuple[str, ...]] | None = None
    drives_kinds: tuple[str, ...] = ()  # the kinds of method `drives` may name
    devices: tuple[str, ...] = DEVICES
    device_hint: str = ""
    candidates: tuple[Candidate, ...] = ()
    step_kinds: Callable[[dict[str, Any]], tuple[str, dict[str, dict]] | None] | None = None
    describe: Callable[[dict[str, Any]], list[str]] | None = None
    model: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name}: kind must be one of {KINDS}, got {self.kind}")
        for c in self.candidates:
            if c.tier not in TIERS:
                raise ValueError(f"method {self.name}: candidate tier {c.tier!r} not in {TIERS}")

    def driven(self, options: dict[str, Any]) -> list[MethodSpec]:
        """The methods this one runs inside, resolved (empty for a plain method). A name that
        does not resolve, or that names this method, is left to the method's own validation,
        which reports it with the flag that set it."""
        out = []
        for n in self.drives(options) if self.drives else ():
            try:
                sub = get_method(n)
            except MemplanError:
                continue
            if sub.name != self.name and sub.drives is None:
                out.append(sub)
        return out

    def all_knobs(self, options: dict[str, Any]) -> set[str]:
        """Knobs that apply: its own and those of the methods it drives."""
        out = set(self.knobs)
        for sub in self.driven(options):
            out |= set(sub.knobs)
        return out

    def check_device(self, device: str, options: dict[str, Any]) -> None:
        """Refuse a device this method (or a method it drives) cannot run on."""
        for spec in (self, *self.driven(options)):
            if device not in spec.devices:
                raise MemplanError(
                    spec.device_hint
                    or f"{spec.name} cannot run on {device}: use --device "
                    + " or ".join(spec.devices)
                )


# ---- the registry -------------------------------------------------------------------------------
_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}
_GROUPS: dict[str, SettingsGroup] = {}
_WORKLOAD_KNOBS: dict[str, Knob] = {k.name: k for k in WORKLOAD_KNOBS}


def register(spec: MethodSpec, replace_existing: bool = False) -> MethodSpec:
    """Add a method to the registry (a name or alias already taken is an error unless
    `replace_existing`); returns it, so a module can write `SPEC = register(MethodSpec(...))`."""
    taken = [n for n in (spec.name, *spec.aliases) if n in _METHODS or n in _ALIASES]
    if taken and not replace_existing:
        raise ValueError(f"method name(s) already registered: {', '.join(taken)}")
    for key in spec.settings:
        if key not in _GROUPS:
            raise ValueError(f"method {spec.name}: unknown settings group {key!r}")
    _METHODS[spec.name] = spec
    for a in spec.aliases:
        _ALIASES[a] = spec.name
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    spec = _METHODS.pop(name, None)
    if spec is not None:
        for a in spec.aliases:
            _ALIASES.pop(a, None)


def register_settings(group: SettingsGroup) -> SettingsGroup:
    """Add a settings group; a knob name shared with another group must agree in type and
    default (e.g. --rank: LoRA's r and GaLore's rank)."""
    for k in group.knobs:
        other = knob(k.name, missing_ok=True)
        if other is not None and (other.type, other.default) != (k.type, k.default):
            raise ValueError(f"knob --{k.name} declared twice with different types or defaults")
    _GROUPS[group.key] = group
    return group


def unregister_settings(key: str) -> None:
    """Remove a settings group (tests that register a toy group clean up with this)."""
    _GROUPS.pop(key, None)


def get_method(name: str) -> MethodSpec:
    """Resolve a method name or alias; unknown names raise with close matches."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise unknown("method", name, [*_METHODS, *_ALIASES], "memplan methods")
    return _METHODS[key]


def methods(kind: str | Iterable[str] | None = None) -> list[MethodSpec]:
    """Registered methods in registration order, optionally of one kind (or several)."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind) if kind is not None else None
    return [m for m in _METHODS.values() if kinds is None or m.kind in kinds]


def settings_groups() -> list[SettingsGroup]:
    return list(_GROUPS.values())


def settings_group(key: str) -> SettingsGroup:
    return _GROUPS[key]


def method_knobs() -> dict[str, Knob]:
    """Every knob of every settings group, by name, each once (in declaration order)."""
    out: dict[str, Knob] = {}
    for g in _GROUPS.values():
        for k in g.knobs:
            if k.name in out and k.help not in out[k.name].help:
                out[k.name] = replace(out[k.name], help=out[k.name].help + "; " + k.help)
            out.setdefault(k.name, k)
    return out


def workload_knobs() -> dict[str, Knob]:
    return dict(_WORKLOAD_KNOBS)


def knob(name: str, missing_ok: bool = False) -> Knob | None:
    for g in _GROUPS.values():
        for k in g.knobs:
            if k.name == name:
                return k
    if name in _WORKLOAD_KNOBS:
        return _WORKLOAD_KNOBS[name]
    if missing_ok:
        return None
    raise KeyError(name)


def scoped_knobs() -> set[str]:
    """Knobs that belong to some methods only: every settings group's, plus workload knobs a
    method claims (optimizer_impl belongs to the torch first-order optimizers)."""
    own = {k for m in _METHODS.values() for k in m.knobs}
    return set(method_knobs()) | (own & set(_WORKLOAD_KNOBS))


def methods_taking(knob_name: str) -> list[str]:
    """Names of the methods whose own knobs include `knob_name`."""
    return [m.name for m in _METHODS.values() if knob_name in m.knobs]


def check_knobs(spec: MethodSpec, given: Iterable[str], options: dict[str, Any]) -> None:
    """A knob the user gave that does not apply to the method is an error naming the flag and
    the methods it applies to."""
    applies = spec.all_knobs(options)
    for name in given:
        if name not in scoped_knobs() or name in applies:
            continue
        k = knob(name)
        takers = methods_taking(name)
        kinds = {get_method(t).kind for t in takers}
        drivers = [
            m.name
            for m in _METHODS.values()
            if m.name not in takers and kinds & set(m.drives_kinds)
        ]
        via = f" (or {', '.join(drivers)} driving one of them)" if drivers else ""
        raise MemplanError(
            f"{k.flag} does not apply to --method {spec.name}; it applies to "
            f"{', '.join(takers) or 'no method'}{via}"
        )


def default_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`options` with every settings group present (its defaults where missing or None)."""
    out = {k: v for k, v in (options or {}).items() if v is not None}
    for g in _GROUPS.values():
        if g.key not in out:
            out[g.key] = g.cls()
    return out


# ---- plugins ------------------------------------------------------------------------------------
_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Import third-party method modules once: `MEMPLAN_PLUGINS` (comma-separated module names)
    and entry points of the group `memplan.methods`. A module that fails to import is a user
    error naming it."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import importlib

    names = [n.strip() for n in os.environ.get("MEMPLAN_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise MemplanError(
                f"MEMPLAN_PLUGINS names {name}, which cannot be imported ({e}); fix or unset it"
            ) from e
    from importlib.metadata import entry_points

    for ep in entry_points(group="memplan.methods"):
        ep.load()
