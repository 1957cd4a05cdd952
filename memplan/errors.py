"""User-facing errors: each becomes one line on stderr and exit code 2 in the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
