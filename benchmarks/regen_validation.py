"""Regenerate the rows of docs/validation/*.jsonl with the current code; compare to the byte.

    python benchmarks/regen_validation.py                      # every row's estimate, 3 files
    python benchmarks/regen_validation.py --measured --files docs/validation/cpu.jsonl
    python benchmarks/regen_validation.py --sample --measured  # one row per model/method/dtype
    python benchmarks/regen_validation.py --rows 84,89 --files docs/validation/cpu.jsonl
    python benchmarks/regen_validation.py --write              # rewrite the rows that differ

A refactor keeps every number: each row, rebuilt from its own fields and run through the current
code, must serialize (json.dumps, the writers' key order) to the same text as the stored line.

What is compared, per file kind:
- profile rows (cpu.jsonl, meta.jsonl, from benchmarks/validate.py): the `estimate` dict always
  (pure Python, milliseconds a row); with --measured also the `measured` dict, from the real step
  re-run on the row's device (cpu: about a second a row; meta 7B-13B rows: 10-40 s each) with
  only its wall-clock `info.seconds` taken over from the stored row. `info.ops` (the number of
  ATen ops the tracker saw) is compared: it is deterministic.
- plan rows (plan-meta.jsonl, from benchmarks/validate_plan.py): everything the planner and the
  estimator give (`recommended`, `estimate_tensor_peak`, `runtime_bytes` and the card's budget);
  with --measured also the meta simulation and what is derived from it (`meta_tensor_peak`,
  `rel_error`, `meta_need_bytes`, `fits_*`): a 7B hybrid step on meta, 20-40 s a row.
The rows' own `seconds` are never compared.

Each line of the summary names the first difference compactly (the row, the part, the first
differing key path, or the first key out of order where only the order differs). Exit status 1
on any difference or on a row that cannot be rebuilt.

--write rewrites each checked file with the regenerated rows in place of the stored ones (rows
order kept; rows not checked, e.g. outside --sample, stay as they are). Wall-clock `seconds`
stay as stored, so rewriting rows that are equal changes nothing. A profile row's `rel_error` is
kept when its estimate and measured dicts are unchanged and recomputed otherwise (the formula
of memplan.cli.profile_row, copied in `_rel_errors`).

Rows are mapped to inputs by one function per file kind (`profile_inputs`, `plan_inputs`): when
method settings or the workload move, those are the functions to edit. Only the public entry
points are used: memplan.estimate.estimate, memplan.measure.run.measure, memplan.workload,
memplan.models.load_config and the memplan.plan functions validate_plan.py calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "docs" / "validation"
DEFAULT_FILES = ("cpu.jsonl", "meta.jsonl", "plan-meta.jsonl")


class RowError(Exception):
    """A row the regenerator cannot rebuild inputs for (unknown fields, inconsistent info)."""


# ---- rows -> inputs (edit these when method settings or the workload move) ----------------------


@dataclass
class ProfileInputs:
    """What benchmarks/validate.py passed to estimate() and measure() for one row."""

    model: str
    method: str
    workload: Any  # memplan.workload.Workload
    estimate_options: dict[str, Any] = field(default_factory=dict)
    measure_options: dict[str, Any] = field(default_factory=dict)


# keys of a Breakdown's info that the code derives (outputs, not inputs): checked by the
# comparison itself, never read back as settings
PROFILE_DERIVED = {"estimate": ("params", "family", "attention_kernel"), "measured": ("family",)}
PROFILE_MEASURED_ONLY = ("attention_kernel", "ops", "seconds")  # the measured step's own figures


def _workload_fields() -> tuple[str, ...]:
    from memplan.workload import Workload

    return tuple(f.name for f in dataclasses.fields(Workload))


def profile_inputs(row: dict) -> ProfileInputs:
    """Model, method, workload and settings of a validate.py row, from `estimate.info`.

    validate.py runs first-order methods with their default settings: `info` holds the model,
    the method, the GPU preset (null) and every Workload field, and nothing else that is an
    input. Any other key (a method setting a future row records, e.g. `zo_impl`) is refused
    until it is mapped here, so no setting is silently dropped. The measured info must name the
    same model, method and workload."""
    from memplan.workload import Workload

    est, meas = row["estimate"]["info"], row["measured"]["info"]
    wl_fields = _workload_fields()
    known = {"model", "method", "gpu", *wl_fields, *PROFILE_DERIVED["estimate"]}
    unknown = [k for k in est if k not in known]
    if unknown:
        raise RowError(f"estimate.info has keys not mapped to inputs: {', '.join(unknown)}")
    known_meas = {"model", "method", *wl_fields, *PROFILE_DERIVED["measured"]}
    unknown = [k for k in meas if k not in known_meas and k not in PROFILE_MEASURED_ONLY]
    if unknown:
        raise RowError(f"measured.info has keys not mapped to inputs: {', '.join(unknown)}")
    for k in ("model", "method", *wl_fields):
        if est[k] != meas[k]:
            raise RowError(f"estimate.info.{k} {est[k]!r} != measured.info.{k} {meas[k]!r}")
    return ProfileInputs(
        model=est["model"],
        method=est["method"],
        workload=Workload(**{k: est[k] for k in wl_fields}),
        estimate_options={"gpu": est["gpu"]},
    )


@dataclass
class PlanInputs:
    """What benchmarks/validate_plan.py passed to plan(), estimate() and measure() for a row."""

    model: str
    gpu: str
    zo_layers: int
    workload: Any  # memplan.workload.Workload, device cuda (the meta run replaces the device)
    zo: Any  # memplan.methods.zo.ZOSettings
    hybrid: Any  # memplan.methods.hybrid.HybridSettings


# validate_plan.py's fixed settings, which its rows do not record
PLAN_BATCH, PLAN_DTYPE, PLAN_DEVICE = 1, "bf16", "cuda"
PLAN_ZO = {"impl": "chunked", "chunk_elems": 1 << 24}


def plan_inputs(row: dict) -> PlanInputs:
    """A validate_plan.py row records model, seq, gpu and zo_layers (K); the batch (1), the
    dtype (bf16), the device (cuda; meta for the simulation) and the ZO settings (chunked,
    2^24-element chunks) are constants of validate_plan.py, repeated here."""
    from memplan.methods.hybrid import HybridSettings
    from memplan.methods.zo import ZOSettings
    from memplan.workload import Workload

    return PlanInputs(
        model=row["model"],
        gpu=row["gpu"],
        zo_layers=row["zo_layers"],
        workload=Workload(batch=PLAN_BATCH, seq=row["seq"], dtype=PLAN_DTYPE, device=PLAN_DEVICE),
        zo=ZOSettings(**PLAN_ZO),
        hybrid=HybridSettings(zo_layers=row["zo_layers"]),
    )


# ---- regeneration --------------------------------------------------------------------------------


def _rel_errors(est: dict, meas: dict) -> dict[str, float]:
    """memplan.cli.profile_row's `rel_error` from the two dicts (used only to rewrite a row
    whose estimate or measured dict changed)."""

    def rel(e: float, m: float) -> float:
        if m == 0:
            return 0.0 if e == 0 else float("inf")
        return (e - m) / m

    errors = {c: rel(est["categories"][c], meas["categories"][c]) for c in est["categories"]}
    errors["peak"] = rel(est["tensor_peak_bytes"], meas["tensor_peak_bytes"])
    return errors


def _keep_seconds(new: dict, old: dict) -> dict:
    """`new` (a Breakdown dict) with the stored wall-clock `info.seconds`, in place."""
    if "seconds" in new.get("info", {}) and "seconds" in old.get("info", {}):
        new["info"]["seconds"] = old["info"]["seconds"]
    return new


def regen_profile(row: dict, measured: bool) -> dict:
    """The row as validate.py would write it now (estimate, and measured when asked)."""
    from memplan.estimate import estimate
    from memplan.models import load_config

    inp = profile_inputs(row)
    cfg = load_config(inp.model)
    est = estimate(cfg, inp.method, inp.workload, **inp.estimate_options).to_dict()
    if measured:
        from memplan.measure.run import measure

        meas = measure(cfg, inp.method, inp.workload, **inp.measure_options).to_dict()
        meas = _keep_seconds(meas, row["measured"])
    else:
        meas = row["measured"]
    unchanged = est == row["estimate"] and meas == row["measured"]
    new = {
        "seq": est["info"]["seq"],
        "estimate": est,
        "measured": meas,
        "rel_error": row["rel_error"] if unchanged else _rel_errors(est, meas),
    }
    if "seconds" in row:
        new["seconds"] = row["seconds"]
    return new


@cache
def _plan_split(model: str, gpu: str, seq: int) -> int:
    """validate_plan.py's plan() call (both rows of a model and seq share it)."""
    from memplan.plan import make_budget, plan

    inp = plan_inputs({"model": model, "gpu": gpu, "seq": seq, "zo_layers": 0})
    return plan(model, inp.workload, make_budget(gpu), zo=inp.zo, gpu=gpu).split


PLAN_MEASURED_KEYS = (
    "meta_tensor_peak",
    "rel_error",
    "meta_need_bytes",
    "fits_after_margin",
    "fits_card",
)


def regen_plan(row: dict, measured: bool) -> dict:
    """The row as validate_plan.py would write it now; without `measured` the meta peak is the
    stored one (the fields derived from it are recomputed from it and the new estimate)."""
    from memplan.estimate import estimate
    from memplan.plan import make_budget

    inp = plan_inputs(row)
    bud = make_budget(inp.gpu)
    split = _plan_split(inp.model, inp.gpu, inp.workload.seq)
    est = estimate(inp.model, "hybrid", inp.workload, gpu=inp.gpu, zo=inp.zo, hybrid=inp.hybrid)
    if measured:
        from memplan.measure.run import measure

        wl = dataclasses.replace(inp.workload, device="meta")
        meta_peak = measure(inp.model, "hybrid", wl, zo=inp.zo, hybrid=inp.hybrid).tensor_peak
    else:
        meta_peak = row["meta_tensor_peak"]
    need = meta_peak + est.runtime_bytes + bud.context_bytes
    new = {
        "model": inp.model,
        "seq": inp.workload.seq,
        "gpu": inp.gpu,
        "recommended": inp.zo_layers == split,
        "zo_layers": inp.zo_layers,
        "estimate_tensor_peak": est.tensor_peak,
        "meta_tensor_peak": meta_peak,
        "rel_error": est.tensor_peak / meta_peak - 1,
        "runtime_bytes": est.runtime_bytes,
        "context_bytes": bud.context_bytes,
        "margin_bytes": bud.margin_bytes,
        "total_bytes": bud.total_bytes,
        "meta_need_bytes": need,
        "fits_after_margin": need <= bud.total_bytes - bud.margin_bytes,
        "fits_card": need <= bud.total_bytes,
    }
    if "seconds" in row:
        new["seconds"] = row["seconds"]
    return new


# ---- file kinds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    regen: Callable[[dict, bool], dict]
    parts: Callable[[dict, bool], dict[str, tuple[str, ...]]]  # part name -> row keys
    label: Callable[[dict], str]  # a short readable name of a row
    group: Callable[[dict], tuple]  # --sample keeps the first row of each group


def _profile_parts(row: dict, measured: bool) -> dict[str, tuple[str, ...]]:
    return {"estimate": ("estimate",), **({"measured": ("measured",)} if measured else {})}


def _plan_parts(row: dict, measured: bool) -> dict[str, tuple[str, ...]]:
    est = tuple(k for k in row if k not in PLAN_MEASURED_KEYS and k != "seconds")
    return {"estimate": est, **({"measured": PLAN_MEASURED_KEYS} if measured else {})}


def _profile_label(row: dict) -> str:
    i = row["estimate"]["info"]
    return f"{i['model']}/{i['method']}/seq{i['seq']}/{i['dtype']}"


def _plan_label(row: dict) -> str:
    return f"{row['model']}/seq{row['seq']}/{row['gpu']}/K{row['zo_layers']}"


PROFILE = Kind(
    "profile",
    regen_profile,
    _profile_parts,
    _profile_label,
    lambda r: tuple(r["estimate"]["info"][k] for k in ("model", "method", "dtype")),
)
PLAN = Kind("plan", regen_plan, _plan_parts, _plan_label, lambda r: (r["model"], r["recommended"]))


def kind_of(row: dict) -> Kind:
    if "estimate" in row and "measured" in row:
        return PROFILE
    if "zo_layers" in row and "meta_tensor_peak" in row:
        return PLAN
    raise RowError(f"unknown row kind (keys: {', '.join(row)})")


# ---- comparison ----------------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    """The writers' serialization (json.dumps with its defaults)."""
    return json.dumps(obj)


def part_text(row: dict, keys: Iterable[str]) -> str:
    """The JSON text of the row's part: the value itself for one key (the `estimate` dict's text
    exactly as it sits in the line), else the sub-dict of those keys in the given order."""
    keys = tuple(keys)
    if len(keys) == 1:
        return dumps(row[keys[0]])
    return dumps({k: row[k] for k in keys if k in row})


def _part_value(row: dict, keys: tuple[str, ...]) -> Any:
    """What `part_text` serializes, as a value (row keys as paths: see `first_difference`)."""
    if len(keys) == 1:
        return row.get(keys[0])
    return {k: row[k] for k in keys if k in row}


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first place two JSON values differ, compactly: a value or a missing key first (the
    first in the stored row's order), else the first key out of order (equal as values but
    serialized differently). None when the JSON texts are equal."""
    if dumps(old) == dumps(new):
        return None
    if old != new:
        return _value_difference(old, new, path)
    return _order_difference(old, new, path)


def _value_difference(old: Any, new: Any, path: str) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old:
            if k not in new:
                return f"{_join(path, k)}: missing in regenerated"
            if old[k] != new[k]:
                return _value_difference(old[k], new[k], _join(path, k))
        for k in new:
            if k not in old:
                return f"{_join(path, k)}: new key (= {_short(new[k])})"
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return _value_difference(a, b, f"{path}[{i}]")
    return f"{path or '<row>'}: {_short(old)} -> {_short(new)}"


def _order_difference(old: Any, new: Any, path: str) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return (
                    f"{path or '<row>'}: key order differs at position {i}: stored {a!r}, now {b!r}"
                )
        for k in old:
            if dumps(old[k]) != dumps(new[k]):
                return _order_difference(old[k], new[k], _join(path, k))
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):
            if dumps(a) != dumps(b):
                return _order_difference(a, b, f"{path}[{i}]")
    return f"{path or '<row>'}: text differs"  # e.g. 1 vs 1.0, equal as values


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(v: Any, n: int = 60) -> str:
    s = dumps(v)
    return s if len(s) <= n else s[: n - 3] + "..."


@dataclass
class RowResult:
    index: int  # 1-based line number in the file
    label: str
    new: dict | None  # the regenerated row (None: it could not be rebuilt)
    diffs: dict[str, str] = field(default_factory=dict)  # part -> first difference
    error: str | None = None
    value_equal: bool = True  # equal as JSON values (only key order may differ)
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return self.error is None and not self.diffs

    def describe(self) -> str:
        state = "equal" if self.equal else self.error or "; ".join(self.diffs.values())
        return f"row {self.index} {self.label}: {state}"


def check_row(row: dict, index: int, measured: bool, line: str | None = None) -> RowResult:
    """Regenerate one row and compare each part's JSON text with the stored one; when every part
    is equal and the stored `line` is given, the whole regenerated line too (the row's own keys,
    their order and the fields derived from the parts, e.g. `rel_error`)."""
    kind = kind_of(row)
    res = RowResult(index, kind.label(row), None)
    t0 = time.perf_counter()
    try:
        res.new = kind.regen(row, measured)
    except Exception as e:  # a refactor may break a row: report it, go on with the others
        res.error = f"{type(e).__name__}: {e}"
        res.value_equal = False
        return res
    finally:
        res.seconds = time.perf_counter() - t0
    for part, keys in kind.parts(row, measured).items():
        if part_text(row, keys) != part_text(res.new, keys):
            old, new = _part_value(row, keys), _part_value(res.new, keys)
            res.diffs[part] = first_difference(old, new, keys[0] if len(keys) == 1 else "")
            res.value_equal &= old == new
    if not res.diffs and line is not None and dumps(res.new) != line:
        res.diffs["row"] = f"whole row: {first_difference(row, res.new)}"
        res.value_equal = row == res.new
    return res


# ---- files ---------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[tuple[int, str, dict]]:
    """(1-based line number, the line's text, the row) for each non-empty line."""
    return [
        (n, line, json.loads(line))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip()
    ]


def select(
    rows: list[tuple[int, str, dict]],
    sample: bool = False,
    limit: int | None = None,
    numbers: Iterable[int] | None = None,
) -> list[tuple[int, str, dict]]:
    """--rows (line numbers), then --sample (the first row of each model/method/dtype; of each
    model and role for plan rows: deterministic), then --limit (the first N)."""
    if numbers is not None:
        wanted = set(numbers)
        rows = [r for r in rows if r[0] in wanted]
    if sample:
        seen: set = set()
        picked = []
        for r in rows:
            g = kind_of(r[2]).group(r[2])
            if g not in seen:
                seen.add(g)
                picked.append(r)
        rows = picked
    return rows[:limit] if limit is not None else rows


@dataclass
class FileResult:
    path: Path
    rows: list[RowResult]
    total: int
    seconds: float

    @property
    def differing(self) -> list[RowResult]:
        return [r for r in self.rows if not r.equal]

    def summary(self, measured: bool) -> str:
        what = "estimate + measured" if measured else "estimate"
        bad = self.differing
        order_only = sum(1 for r in bad if r.value_equal)
        s = (
            f"{self.path.name}: {len(self.rows)}/{self.total} rows checked ({what}, "
            f"{self.seconds:.1f} s): {len(self.rows) - len(bad)} equal, {len(bad)} differing"
        )
        if order_only:
            s += f" ({order_only} in key order only)"
        if bad:
            s += f"; first: {bad[0].describe()}"
            worse = next((r for r in bad if not r.value_equal), None)
            if worse is not None and worse is not bad[0]:
                s += f"; first in values: {worse.describe()}"
        return s


def check_file(
    path: Path,
    measured: bool = False,
    sample: bool = False,
    limit: int | None = None,
    numbers: Iterable[int] | None = None,
    progress: Callable[[RowResult], None] | None = None,
) -> FileResult:
    rows = read_rows(path)
    chosen = select(rows, sample, limit, numbers)
    t0 = time.perf_counter()
    results = []
    for n, line, row in chosen:
        res = check_row(row, n, measured, line)
        results.append(res)
        if progress is not None:
            progress(res)
    return FileResult(path, results, len(rows), time.perf_counter() - t0)


def write_file(path: Path, result: FileResult) -> int:
    """Rewrite `path` with the regenerated rows in place of the stored ones; rows that were not
    checked or could not be rebuilt stay as stored. Returns how many lines changed."""
    lines = path.read_text().splitlines()
    changed = 0
    for r in result.rows:
        if r.new is None:
            continue
        text = dumps(r.new)
        if lines[r.index - 1] != text:
            lines[r.index - 1] = text
            changed += 1
    if changed:
        path.write_text("".join(line + "\n" for line in lines))
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--files",
        nargs="+",
        type=Path,
        default=[VALIDATION / f for f in DEFAULT_FILES],
        help="JSONL files (default: the three of docs/validation)",
    )
    ap.add_argument(
        "--measured",
        action="store_true",
        help="also re-run the measured step (cpu/meta) and compare its dict (slow on meta)",
    )
    ap.add_argument(
        "--sample", action="store_true", help="only the first row of each model/method/dtype"
    )
    ap.add_argument("--limit", type=int, help="only the first N (selected) rows of each file")
    ap.add_argument(
        "--rows",
        type=lambda s: [int(x) for x in s.split(",")],
        help="only these 1-based line numbers (comma-separated)",
    )
    ap.add_argument("--write", action="store_true", help="rewrite the files from the new rows")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per row")
    args = ap.parse_args(argv)

    import memplan

    print(f"memplan from {Path(memplan.__file__).parent}")

    def progress(r: RowResult) -> None:
        if args.verbose:
            print(f"  {r.describe()} ({r.seconds:.2f} s)", flush=True)

    failed = False
    for path in args.files:
        res = check_file(path, args.measured, args.sample, args.limit, args.rows, progress)
        print(res.summary(args.measured), flush=True)
        failed |= bool(res.differing)
        if args.write:
            print(f"  {path.name}: rewrote {write_file(path, res)} rows")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
