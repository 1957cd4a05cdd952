"""GPU presets, the memory budget a step must fit, and the one fit rule every command uses.

GPU presets: total memory as the driver reports it, and a typical CUDA context size.

`total_bytes` is nvidia-smi's `memory.total` (MiB, converted to bytes), which is also what
`torch.cuda.get_device_properties(i).total_memory` reports up to a few MiB of driver
reservation. These figures are the commonly reported ones for each card; memplan did not measure
them (a lent GPU run records its own in docs/validation/). `context_bytes` is the memory a
PyTorch process holds outside the caching allocator after its first matmul (CUDA context,
cuBLAS and cuDNN handles and module images): typically 0.4-0.6 GiB; NVML minus
`torch.cuda.memory_reserved()` measures it on a real run (`memplan profile --device cuda`).

The fit rule (`Budget.fit`): allocator peak + CUDA context <= the card's memory - a safety
margin. The margin (default 2 % of the card) covers what the estimator does not model: the
caching allocator's fragmentation and reserved-but-free blocks, and library workspaces beyond
cuBLAS'. It is an assumption, not a measurement (no GPU run validates it yet); `--margin` sets
it. `estimate`, `plan` and `profile --device cpu` all judge a fit with it; on the host (`--device
cpu`) the card is the memory the kernel reports available (MemAvailable) and there is no
context.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memplan.breakdown import fmt_bytes
from memplan.errors import MemplanError, unknown

MiB = 2**20


@dataclass(frozen=True)
class GPU:
    name: str
    total_bytes: int
    context_bytes: int
    note: str
    source: str = "nvidia-smi memory.total (commonly reported), not measured by memplan"


_CTX = 500 * MiB  # typical PyTorch CUDA context + library handles (assumption, see above)

GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU("rtx4090", 24564 * MiB, _CTX, "Ada, 24 GB GDDR6X (the default budget)"),
        GPU("rtx3090", 24576 * MiB, _CTX, "Ampere, 24 GB GDDR6X"),
        GPU("rtx4080", 16376 * MiB, _CTX, "Ada, 16 GB GDDR6X"),
        GPU("l4", 23034 * MiB, _CTX, "Ada, 24 GB GDDR6 (ECC on)"),
        GPU("t4", 15360 * MiB, 400 * MiB, "Turing, 16 GB GDDR6 (ECC on)"),
        GPU("a10g", 23028 * MiB, _CTX, "Ampere, 24 GB GDDR6 (ECC on)"),
        GPU("a100-40g", 40960 * MiB, _CTX, "Ampere, 40 GB HBM2"),
        GPU("a100-80g", 81920 * MiB, _CTX, "Ampere, 80 GB HBM2e"),
        GPU("h100-80g", 81559 * MiB, 520 * MiB, "Hopper, 80 GB HBM3"),
        GPU("h200", 143771 * MiB, 520 * MiB, "Hopper, 141 GB HBM3e"),
    ]
}
_ALIASES = {
    "4090": "rtx4090",
    "3090": "rtx3090",
    "4080": "rtx4080",
    "a100": "a100-80g",
    "a100-80gb": "a100-80g",
    "a100-40gb": "a100-40g",
    "h100": "h100-80g",
    "h100-80gb": "h100-80g",
}


def gpu_names() -> list[str]:
    return list(GPUS)


def get_gpu(name: str) -> GPU:
    """A GPU preset by name or alias (case-insensitive); unknown names suggest close ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise unknown("GPU", name, [*GPUS, *_ALIASES], "memplan gpus")
    return GPUS[key]


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_budget(text: str, what: str = "budget") -> int:
    """'24GB', '22.5GiB', '24000MB', '24e9' -> bytes (GB = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise MemplanError(
            f"cannot read the {what} '{text}' (--{what}): give a number with GB, GiB, MB or MiB "
            "(e.g. 24GB or 22.5GiB)"
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise MemplanError(f"--{what} must be positive, got '{text}'")
    return int(value)


# ---- budget and the fit rule -------------------------------------------------------------------
DEFAULT_MARGIN = 0.02  # fraction of the card's memory kept free (see the module docstring)


@dataclass(frozen=True)
class Fit:
    """A step's need (allocator peak + context) against a budget."""

    budget: Budget
    need_bytes: int

    @property
    def headroom_bytes(self) -> int:
        """What is left after the need and the margin (negative: over by that much)."""
        return self.budget.total_bytes - self.budget.margin_bytes - self.need_bytes

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "need_bytes": self.need_bytes,
            "gpu_bytes": self.budget.total_bytes,
            "total_bytes": self.budget.total_bytes,
            "context_bytes": self.budget.context_bytes,
            "margin_bytes": self.budget.margin_bytes,
            "headroom_bytes": self.headroom_bytes,
            "fits": self.fits,
        }


@dataclass(frozen=True)
class Budget:
    """A card's memory, the CUDA context that lives outside the allocator, and the margin."""

    name: str
    total_bytes: int
    context_bytes: int
    margin_bytes: int

    @property
    def usable_bytes(self) -> int:
        """What the allocator may hold: total - context - margin."""
        return self.total_bytes - self.context_bytes - self.margin_bytes

    def fit(self, peak_bytes: int) -> Fit:
        """The fit rule: allocator peak + context <= total - margin."""
        return Fit(self, peak_bytes + self.context_bytes)

    def describe(self, unit: str | None = None) -> str:
        """'rtx4090 25.76 GB (23.99 GiB), margin 0.48 GiB (2.0 %)' for the report line."""
        pct = 100 * self.margin_bytes / self.total_bytes if self.total_bytes else 0.0
        return (
            f"{self.name} {fmt_bytes(self.total_bytes, 'GB')} "
            f"({fmt_bytes(self.total_bytes, 'GiB')}), margin "
            f"{fmt_bytes(self.margin_bytes, unit)} ({pct:.1f} %)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "total_bytes": self.total_bytes,
            "context_bytes": self.context_bytes,
            "margin_bytes": self.margin_bytes,
            "usable_bytes": self.usable_bytes,
        }


def make_budget(
    gpu: str | None = None, budget: str | None = None, margin: str | None = None
) -> Budget:
    """A Budget from a GPU preset (default rtx4090) and/or an explicit budget ('24GB': the
    card's memory; the preset's CUDA context is still subtracted) and a margin ('2%', '0.02'
    or '1GB'; default 2 % of the card)."""
    g = get_gpu(gpu or "rtx4090")
    total = parse_budget(budget) if budget is not None else g.total_bytes
    name = budget.strip() if budget is not None else g.name
    return Budget(name, total, g.context_bytes, parse_margin(margin, total))


def host_available_bytes() -> int:
    """Memory the host can give a new process now: /proc/meminfo's MemAvailable (Linux),
    else free physical pages x page size (os.sysconf)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError) as e:
        raise MemplanError(
            "cannot read the host's available memory (no /proc/meminfo, no sysconf); "
            "give it with --budget (e.g. --budget 32GB)"
        ) from e


def host_budget(budget: str | None = None, margin: str | None = None) -> Budget:
    """The host's memory as a Budget for `--device cpu`: MemAvailable (or --budget), no CUDA
    context, the same margin rule as a GPU."""
    if budget is not None:
        total, name = parse_budget(budget), f"host {budget.strip()}"
    else:
        total, name = host_available_bytes(), "host memory available"
    return Budget(name, total, 0, parse_margin(margin, total))


def parse_margin(text: str | None, total: int) -> int:
    """'2%', '0.02' (a fraction of `total`) or '1GB' (a size) -> bytes; None: 2 %."""
    if text is None:
        return int(DEFAULT_MARGIN * total)
    t = str(text).strip()
    wrong = MemplanError(
        f"--margin takes a fraction of the card in [0, 1) (e.g. 0.02 or 2%) or a size "
        f"(e.g. 1GB); got '{text}'"
    )
    try:
        frac = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        try:
            return parse_budget(t, "margin")  # a size with a unit: '1GB', '512MiB'
        except MemplanError:
            raise wrong from None
    if not 0 <= frac < 1:
        raise wrong
    return int(frac * total)


def budget_for(
    device: str, gpu: str | None = None, budget: str | None = None, margin: str | None = None
) -> Budget:
    """The budget a step on `device` must fit: the host's memory for cpu, else the GPU's."""
    if device == "cpu":
        return host_budget(budget, margin)
    return make_budget(gpu, budget, margin)
