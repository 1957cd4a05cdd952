"""Reading a `memplan plan --json` file back: the recommended split `memplan profile --plan`
runs. Every key profile needs is checked, so a file that is valid JSON but not a plan (or a
plan with nothing that fit) is one clear error, never a KeyError. No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memplan.errors import MemplanError
from memplan.workload import Workload

_WRITE = "write one with `memplan plan MODEL --json > plan.json`"
# recommended.workload keys profile takes from the plan, with their JSON types
_WORKLOAD_KEYS: dict[str, type] = {
    "seq": int,
    "batch": int,
    "dtype": str,
    "attn": str,
    "checkpointing": bool,
    "optimizer_impl": str,
}


@dataclass(frozen=True)
class PlanChoice:
    """The split a plan recommends: run it with `--method hybrid --zo-layers K --fo --zo`."""

    model: str
    zo_layers: int
    fo: str
    zo: str
    workload: dict[str, Any]

    def to_workload(self, device: str) -> Workload:
        """The plan's workload on `device` (a plan is made for CUDA; profile may simulate it)."""
        return Workload(**{k: self.workload[k] for k in _WORKLOAD_KEYS}, device=device)


def _get(d: dict, key: str, kind: type, path: Path, where: str) -> Any:
    value = d.get(key)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        what = "lacks" if key not in d else f"has a {type(value).__name__} at"
        raise MemplanError(
            f"{path} is not a memplan plan: it {what} {where}{key} (a {kind.__name__}); {_WRITE}"
        )
    return value


def read_plan(path: Path | str) -> PlanChoice:
    """The recommended split of a `memplan plan --json` file, with its model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MemplanError(f"no plan file {path}; {_WRITE}") from e
    except IsADirectoryError as e:
        raise MemplanError(f"{path} is a folder, not a plan file; {_WRITE}") from e
    except UnicodeDecodeError as e:
        raise MemplanError(f"{path} is not a text file, not a plan; {_WRITE}") from e
    except json.JSONDecodeError as e:
        raise MemplanError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {_WRITE}"
        ) from e
    except OSError as e:
        raise MemplanError(f"cannot read {path}: {e.strerror or e}") from e
    if not isinstance(data, dict):
        raise MemplanError(f"{path} holds a JSON {type(data).__name__}, not a plan; {_WRITE}")
    model = _get(data, "model", str, path, "")
    if "recommended" not in data:
        raise MemplanError(f"{path} is not a memplan plan: it lacks recommended; {_WRITE}")
    rec = data["recommended"]
    if rec is None:
        raise MemplanError(
            f"{path} recommends no split (nothing fit {model}); plan again with a larger "
            "--budget or a shorter --seq"
        )
    if not isinstance(rec, dict):
        raise MemplanError(f"{path} is not a memplan plan: recommended is not an object")
    zo_layers = _get(rec, "zo_layers", int, path, "recommended.")
    if zo_layers < 0:
        raise MemplanError(f"{path}: recommended.zo_layers must be 0 or more, got {zo_layers}")
    fo = _get(rec, "fo", str, path, "recommended.")
    zo = _get(rec, "zo", str, path, "recommended.")
    wl = _get(rec, "workload", dict, path, "recommended.")
    for key, kind in _WORKLOAD_KEYS.items():
        _get(wl, key, kind, path, "recommended.workload.")
    return PlanChoice(model, zo_layers, fo, zo, {k: wl[k] for k in _WORKLOAD_KEYS})
