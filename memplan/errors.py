"""User-facing errors: each becomes one line on stderr and exit code 2 in the CLI."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path


class MemplanError(Exception):
    """An error caused by the user's input; the message says what is wrong and how to fix it."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest choices, or ''."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not hits:
        hits = [c for c in lowered if name.lower() in c][:n]
    return f" Did you mean: {', '.join(lowered[h] for h in hits)}?" if hits else ""


def unknown(kind: str, name: str, choices: Iterable[str], listing: str) -> MemplanError:
    """Build the error for an unknown preset/method/GPU name."""
    choices = list(choices)
    return MemplanError(
        f"unknown {kind} '{name}'.{close_matches(name, choices)} (`{listing}` lists them all)"
    )


def check_writable(path: os.PathLike | str, flag: str) -> Path:
    """`path` as a file an option may write (create or append to): its folder exists and is
    writable, and it is not a folder itself. Raises the one-line MemplanError otherwise."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise MemplanError(f"{flag} {path} is a folder; give a file name inside it")
    if not parent.is_dir():
        raise MemplanError(
            f"{flag} {path}: the folder {parent} does not exist; create it (mkdir -p {parent}) "
            "or write elsewhere"
        )
    existed = p.exists()
    try:  # a real probe: access() says yes to root where open() still fails (e.g. in /proc)
        with open(p, "a"):
            pass
    except OSError as e:
        raise MemplanError(
            f"{flag} {path} is not writable ({e.strerror or e}); write elsewhere"
        ) from e
    if not existed:
        p.unlink(missing_ok=True)
    return p
