"""Method registry: names, aliases, family and knobs of every training method (no torch here).

Each family module holds both its memory model and its runnable step, side by side:
`memplan.methods.fo` for first-order optimizers, `memplan.methods.zo` for zeroth-order ones,
`memplan.methods.peft` for LoRA/prefix/prompt. GaLore and hybrid methods are registered so
their names resolve, but are marked unavailable until their modules land.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memplan.errors import MemplanError, unknown


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # "fo" | "zo" | "peft" | "galore" | "hybrid"
    summary: str
    knobs: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    available: bool = False
    cuda_only: bool = False
    defaults: dict = field(default_factory=dict)


_FO_KNOBS = ("lr", "weight_decay", "--optimizer-impl foreach|fused|forloop")
_GALORE_KNOBS = ("rank", "update_proj_gap", "scale", "proj_type", "layerwise", "--galore-step")
_ZO_KNOBS = ("lr", "eps", "weight_decay", "q", "--impl fused|chunked|reference", "chunk")

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("fo-sgd", "fo", "torch SGD, no state", _FO_KNOBS, ("sgd",), True),
        MethodSpec(
            "fo-sgd-mmt",
            "fo",
            "SGD with momentum: one buffer per parameter",
            (*_FO_KNOBS, "momentum"),
            ("sgd-mmt", "momentum"),
            True,
        ),
        MethodSpec(
            "fo-adam",
            "fo",
            "torch Adam: exp_avg + exp_avg_sq per parameter",
            (*_FO_KNOBS, "betas", "eps"),
            ("adam",),
            True,
        ),
        MethodSpec(
            "adamw",
            "fo",
            "torch AdamW (decoupled weight decay): 2 states per parameter",
            (*_FO_KNOBS, "betas", "eps"),
            ("fo-adamw",),
            True,
        ),
        MethodSpec(
            "adam8bit",
            "fo",
            "bitsandbytes 8-bit AdamW: 1-byte states + fp32 block scales",
            ("lr", "weight_decay", "betas", "min_8bit_size"),
            ("adamw8bit",),
            True,
            True,
        ),
        MethodSpec(
            "adafactor",
            "fo",
            "torch Adafactor: factored second moment (row + column)",
            (*_FO_KNOBS, "beta2_decay", "eps"),
            (),
            True,
        ),
        MethodSpec(
            "zo-sgd", "zo", "MeZO: two perturbed forwards, no state", _ZO_KNOBS, ("mezo",), True
        ),
        MethodSpec("zo-sgd-sign", "zo", "ZO-SGD stepping along sign(g) z", _ZO_KNOBS, (), True),
        MethodSpec(
            "zo-sgd-mmt",
            "zo",
            "ZO-SGD with a momentum buffer (P)",
            (*_ZO_KNOBS, "momentum"),
            (),
            True,
        ),
        MethodSpec(
            "zo-sgd-cons",
            "zo",
            "conservative ZO-SGD: best of three points, 5 forwards",
            _ZO_KNOBS,
            (),
            True,
        ),
        MethodSpec(
            "zo-adam",
            "zo",
            "Adam moments (2P) fed with the ZO estimate",
            (*_ZO_KNOBS, "betas"),
            (),
            True,
        ),
        MethodSpec(
            "forward-grad",
            "zo",
            "forward-mode AD (jvp) along a stored random tangent (P): weights + tangent + duals",
            ("lr", "weight_decay", "seed"),
            ("fwd-grad",),
            True,
        ),
        MethodSpec(
            "zo-block",
            "zo",
            "block-wise ZO: one layer/embeddings/head at a time",
            _ZO_KNOBS,
            (),
            True,
        ),
        MethodSpec(
            "zo-sparse",
            "zo",
            "ZO on a magnitude-masked subset (bool mask per weight)",
            (*_ZO_KNOBS, "sparsity"),
            (),
            True,
        ),
        MethodSpec(
            "lora",
            "peft",
            "low-rank adapters A (r x in), B (out x r) on frozen linears (peft)",
            ("--optimizer", "--rank", "--alpha", "--lora-dropout", "--target-modules"),
            (),
            True,
        ),
        MethodSpec(
            "prefix",
            "peft",
            "trainable key/value prefixes per layer, no reparameterization (peft)",
            ("--optimizer", "--virtual-tokens"),
            ("prefix-tuning",),
            True,
        ),
        MethodSpec(
            "prompt",
            "peft",
            "trainable virtual input tokens before the embeddings (peft)",
            ("--optimizer", "--virtual-tokens"),
            ("prompt-tuning",),
            True,
        ),
        MethodSpec(
            "galore",
            "galore",
            "GaLore AdamW: projector + low-rank moments for attention/MLP weights",
            _GALORE_KNOBS,
            ("galore-adamw",),
            True,
        ),
        MethodSpec(
            "galore8bit",
            "galore",
            "GaLore with bitsandbytes 8-bit AdamW states (low-rank)",
            _GALORE_KNOBS,
            ("galore-adamw8bit",),
            True,
            True,
        ),
        MethodSpec(
            "galore-adafactor",
            "galore",
            "GaLore with Adafactor: factored fp32 second moment of the low-rank gradient",
            _GALORE_KNOBS,
            (),
            True,
        ),
        MethodSpec(
            "hybrid",
            "hybrid",
            "embeddings + layers < K zeroth-order, layers >= K + head first-order",
            ("--zo-layers K", "--fo adamw|...", "--zo zo-sgd|...", *_ZO_KNOBS[4:]),
            ("zo-fo", "split"),
            True,
        ),
        MethodSpec(
            "inference",
            "inference",
            "one no-grad forward (the loss included): the floor that ZO methods approach",
            (),
            ("no-grad",),
            True,
        ),
    ]
}
_ALIASES = {a: m.name for m in METHODS.values() for a in m.aliases}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """Resolve a method name or alias; unknown names raise with close matches."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise unknown("method", name, [*METHODS, *_ALIASES], "memplan methods")
    return METHODS[key]


def require_available(spec: MethodSpec) -> MethodSpec:
    if not spec.available:
        raise MemplanError(
            f"method '{spec.name}' ({spec.family}) is not implemented in this version yet; "
            "available: " + ", ".join(m.name for m in METHODS.values() if m.available)
        )
    return spec
