"""Shared test helpers: the CUDA skip marker and the tiny presets."""

from __future__ import annotations

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`memplan ARGS` in process: (exit code, stdout, stderr), as the console script runs."""
    import sys

    from memplan.cli import main

    old = sys.argv
    sys.argv = ["memplan", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err
