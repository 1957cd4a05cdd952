"""The one result type shared by the estimator and every measurement backend.

Bytes everywhere; GB (10^9) vs GiB (2^30) is chosen only when printing (see `fmt_bytes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from memplan.errors import MemplanError

CATEGORIES: tuple[str, ...] = (
    "weights",
    "gradients",
    "optimizer_state",
    "activations",
    "temporaries",
)
# every phase a step can peak in (a method uses those it has)
PHASES: tuple[str, ...] = ("forward", "backward", "optimizer", "perturbation")

GB = 10**9
GiB = 2**30


# display units (bytes per unit): binary ones by default, decimal ones when asked for
UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


def pick_unit(n: float, decimal: bool = False) -> str:
    """The readable unit for `n` bytes: MiB below 1 GiB, GiB below 1 TiB, TiB above (with
    `decimal`: MB, GB, TB at powers of 1000)."""
    n = abs(n)
    k = 1000 if decimal else 1024
    names = ("MB", "GB", "TB") if decimal else ("MiB", "GiB", "TiB")
    if n < k**3:
        return names[0]
    if n < k**4:
        return names[1]
    return names[2]


def parse_unit(text: str | None) -> str | None:
    """A `--unit` value in its canonical spelling (case-insensitive); None or 'auto': None
    (each size picks its own with `pick_unit`)."""
    if text is None or text.strip().lower() == "auto":
        return None
    lowered = {u.lower(): u for u in UNITS}
    unit = lowered.get(text.strip().lower())
    if unit is None:
        raise MemplanError(f"--unit must be auto or one of {', '.join(UNITS)}; got '{text}'")
    return unit


def fmt_bytes(n: float, unit: str | None = None, digits: int = 2) -> str:
    """Format a byte count in `unit` (None: `pick_unit`), always naming the unit."""
    unit = unit or pick_unit(n)
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    if unit == "B":
        return f"{int(n)} B"
    return f"{n / UNITS[unit]:.{digits}f} {unit}"


def _zero() -> dict[str, int]:
    return dict.fromkeys(CATEGORIES, 0)


@dataclass
class PhasePeak:
    """The live set, by category, at the moment a phase reached its own peak."""

    categories: dict[str, int] = field(default_factory=_zero)

    @property
    def total(self) -> int:
        return sum(self.categories.values())


@dataclass
class Breakdown:
    """Bytes per category at the peak, the phase of the peak, and each phase's own peak.

    `peak` is the maximum over phases of each phase's summed live set, never a sum of
    per-category maxima. `runtime` holds named CUDA runtime terms (cuBLAS workspace, allocator
    rounding) that add to the peak on a GPU; `context_bytes` (the CUDA context, outside the
    allocator) is reported apart and added only in `total_bytes`.
    """

    source: str  # "estimate" | "meta" | "cpu" | "cuda"
    phases: dict[str, PhasePeak] = field(default_factory=dict)
    runtime: dict[str, int] = field(default_factory=dict)
    context_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, int] = field(default_factory=dict)  # backend-specific raw figures

    @property
    def peak_phase(self) -> str:
        if not self.phases:
            return "none"
        return max(self.phases, key=lambda p: self.phases[p].total)

    @property
    def categories(self) -> dict[str, int]:
        """Bytes per category in the live set of the peak phase."""
        if not self.phases:
            return _zero()
        return dict(self.phases[self.peak_phase].categories)

    @property
    def tensor_peak(self) -> int:
        """Peak of live tensor bytes (what the allocator's max_memory_allocated counts)."""
        return max((p.total for p in self.phases.values()), default=0)

    @property
    def runtime_bytes(self) -> int:
        return sum(self.runtime.values())

    @property
    def peak(self) -> int:
        """Tensor peak plus named runtime terms: the allocator-level peak."""
        return self.tensor_peak + self.runtime_bytes

    @property
    def total_bytes(self) -> int:
        """Peak plus CUDA context: what nvidia-smi would show."""
        return self.peak + self.context_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "info": self.info,
            "peak_phase": self.peak_phase,
            "peak_bytes": self.peak,
            "tensor_peak_bytes": self.tensor_peak,
            "categories": self.categories,
            "phases": {k: asdict(v)["categories"] for k, v in self.phases.items()},
            "runtime": self.runtime,
            "context_bytes": self.context_bytes,
            "total_bytes": self.total_bytes,
            "measured": self.measured,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Breakdown:
        return cls(
            source=d["source"],
            phases={k: PhasePeak(dict(v)) for k, v in d.get("phases", {}).items()},
            runtime=dict(d.get("runtime", {})),
            context_bytes=int(d.get("context_bytes", 0)),
            info=dict(d.get("info", {})),
            measured=dict(d.get("measured", {})),
        )


def relative_error(estimate: float, measured: float) -> float:
    """(estimate - measured) / measured; 0 when both are 0, inf when only measured is 0."""
    if measured == 0:
        return 0.0 if estimate == 0 else float("inf")
    return (estimate - measured) / measured
