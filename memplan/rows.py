"""The JSONL row of a profile sweep: one point, measured (or out of memory), per line.

`memplan profile --out run.jsonl` appends one row the moment a point finishes; `memplan plot`
reads the file back, and so does a rerun of the same sweep, which skips the points whose row is
already there. A point is identified by its key: model, method, workload (batch, seq, dtype,
attention, checkpointing, optimizer implementation, device) and the method settings.

A row (all sizes in bytes):

    {"model": "tiny-llama", "method": "adamw", "seq": 64,
     "workload": {"batch": 1, "seq": 64, ...}, "settings": {"zo": {...}, ...},
     "estimate": Breakdown.to_dict(), "measured": Breakdown.to_dict(),
     "rel_error": {"weights": ..., ..., "peak": ...}}

An out-of-memory point has "error" (and "error_detail") instead of "measured"/"rel_error".
Rows written before the key existed (no "settings") are read and plotted, never skipped.
No torch here.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from memplan.breakdown import CATEGORIES, Breakdown, relative_error
from memplan.errors import MemplanError
from memplan.workload import WORKLOAD_FIELDS

OOM = "out of memory"
_FIX = "is this a `memplan profile --out` file?"


def settings_dict(options: Mapping[str, Any]) -> dict[str, Any]:
    """Method settings by family name as plain JSON values (dataclasses as dicts)."""
    plain = {k: asdict(v) if is_dataclass(v) else v for k, v in options.items() if v is not None}
    return json.loads(json.dumps(plain, sort_keys=True, default=str))


def point_key(
    model: str, method: str, workload: Mapping[str, Any], settings: Mapping[str, Any]
) -> str:
    """The identity of a sweep point (a JSON string: comparable, hashable)."""
    wl = {k: workload.get(k) for k in WORKLOAD_FIELDS}
    return json.dumps([model, method, wl, dict(settings)], sort_keys=True, default=str)


def row_key(row: Mapping[str, Any]) -> str | None:
    """The key of a row read back; None for rows written without their settings."""
    if "settings" not in row or "workload" not in row:
        return None
    return point_key(row["model"], row["method"], row["workload"], row["settings"])


def _head(est: Breakdown, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    info = est.info
    return {
        "model": info.get("model"),
        "method": info.get("method"),
        "seq": info.get("seq"),
        "workload": {k: info.get(k) for k in WORKLOAD_FIELDS},
        "settings": dict(settings or {}),
    }


def profile_row(
    est: Breakdown, meas: Breakdown, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One measured point: both breakdowns and the relative error per category and at the
    peak. `settings`: the method settings (`settings_dict`) that make the point's key."""
    errors = {c: relative_error(est.categories[c], meas.categories[c]) for c in CATEGORIES}
    errors["peak"] = relative_error(est.tensor_peak, meas.tensor_peak)
    return {
        **_head(est, settings),
        "estimate": est.to_dict(),
        "measured": meas.to_dict(),
        "rel_error": errors,
    }


def oom_row(
    est: Breakdown, detail: str = "", settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A point whose step ran out of memory: the estimate, and what the backend said."""
    return {
        **_head(est, settings),
        "error": OOM,
        "error_detail": detail.strip().splitlines()[0][:300] if detail.strip() else "",
        "estimate": est.to_dict(),
    }


def _breakdown_fields(d: Any, name: str, where: str) -> None:
    if not isinstance(d, dict):
        raise MemplanError(f"{where}: '{name}' is not an object; {_FIX}")
    for key, kind in (("peak_bytes", int), ("info", dict)):
        if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
            raise MemplanError(f"{where}: the row lacks {name}.{key}; {_FIX}")


def validate_row(row: Any, where: str = "row") -> dict[str, Any]:
    """`row` if it has every field plot and a rerun read; else a one-line MemplanError."""
    if not isinstance(row, dict):
        raise MemplanError(f"{where} is a JSON {type(row).__name__}, not a row object; {_FIX}")
    seq = row.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
        raise MemplanError(f"{where}: the row lacks a positive integer 'seq'; {_FIX}")
    if "estimate" not in row:
        raise MemplanError(f"{where}: the row lacks 'estimate'; {_FIX}")
    _breakdown_fields(row["estimate"], "estimate", where)
    if "error" in row:
        return row
    if "measured" not in row:
        raise MemplanError(f"{where}: the row lacks 'measured' (or an 'error'); {_FIX}")
    _breakdown_fields(row["measured"], "measured", where)
    if not isinstance(row["measured"].get("source"), str):
        raise MemplanError(f"{where}: the row lacks measured.source; {_FIX}")
    if "settings" in row:
        for key in ("model", "method", "workload"):
            if key not in row:
                raise MemplanError(f"{where}: the row lacks '{key}'; {_FIX}")
    return row


def read_rows(path: Path, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Rows of a `memplan profile --out` JSONL file, each validated. A truncated last line is
    skipped: a sweep stopped mid-write keeps everything before it."""
    path = Path(path)
    if path.is_dir():
        raise MemplanError(f"{path} is a folder, not a `memplan profile --out` JSONL file")
    if not path.is_file():
        if allow_empty:
            return []
        raise MemplanError(f"no such file: {path} (write one with `memplan profile ... --out`)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MemplanError(
            f"{path} is not a text file (byte {e.start} is not UTF-8); {_FIX}"
        ) from e
    except OSError as e:
        raise MemplanError(f"cannot read {path}: {e.strerror or e}") from e
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not text.endswith("\n"):
                continue  # the line an interruption cut short
            raise MemplanError(f"{path}:{i + 1} is not a JSON line of `memplan profile`") from e
        rows.append(validate_row(row, f"{path}:{i + 1}"))
    if not rows and not allow_empty:
        raise MemplanError(f"{path} has no rows; run `memplan profile ... --out {path}` first")
    return rows


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C waits until the block is done (a row is written whole), then is raised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            if callable(old):
                old(signal.SIGINT, None)
            elif old == signal.SIG_DFL:
                raise KeyboardInterrupt


class RowWriter:
    """Appends rows to a JSONL file, one whole line each, flushed and synced at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = None

    def __enter__(self) -> RowWriter:
        _drop_cut_line(self.path)
        try:
            self._f = self.path.open("a", encoding="utf-8")
        except OSError as e:
            raise MemplanError(f"cannot write {self.path}: {e.strerror or e}") from e
        return self

    def write(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        with _sigint_deferred():
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _drop_cut_line(path: Path) -> None:
    """A last line without its newline: a whole row gets its newline; a line cut short (what
    a killed writer leaves, `read_rows` skips it) is dropped, or the next row would be glued
    to it."""
    try:
        with path.open("rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            try:
                json.loads(data[start:])
            except ValueError:
                f.truncate(start)
            else:
                f.write(b"\n")
    except FileNotFoundError:
        return
    except OSError as e:
        raise MemplanError(f"cannot write {path}: {e.strerror or e}") from e
