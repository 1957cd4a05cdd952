"""GPU presets: total memory as the driver reports it, and a typical CUDA context size.

`total_bytes` is nvidia-smi's `memory.total` (MiB, converted to bytes), which is also what
`torch.cuda.get_device_properties(i).total_memory` reports up to a few MiB of driver
reservation. These figures are the commonly reported ones for each card; memplan did not measure
them (a lent GPU run records its own in docs/validation/). `context_bytes` is the memory a
PyTorch process holds outside the caching allocator after its first matmul (CUDA context,
cuBLAS and cuDNN handles and module images): typically 0.4-0.6 GiB; NVML minus
`torch.cuda.memory_reserved()` measures it on a real run (`memplan profile --device cuda`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def parse_budget(text: str) -> int:
    """'24GB', '22.5GiB', '24000MB', '24e9' -> bytes (GB = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise MemplanError(
            f"cannot read the budget '{text}': give a number with GB, GiB, MB or MiB "
            "(e.g. 24GB or 22.5GiB)"
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise MemplanError(f"the budget must be positive, got '{text}'")
    return int(value)
