"""Imports flow one way (DESIGN.md, "Shape of the code"): bottom to top,

    0  errors, knobs, breakdown, workload, gpus, tape, models (config, layout, limits, hf)
    1  programs (the estimator's op library and family programs), runtime (the runnable step)
    2  methods (one module per method family, and the registry)
    3  estimate, measure, plan, sweeps and report rows
    4  cli, plot

A module imports only from its own layer or below, the memplan import graph has no cycle, and
imports sit at module top except those of modules that load a heavy optional package (torch,
transformers, triton, peft, bitsandbytes, galore_torch, matplotlib, pynvml), which stay lazy so
that `memplan estimate` never imports torch. Read statically with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"memplan": ROOT / "memplan", "memplan_kernels": ROOT / "kernels" / "memplan_kernels"}
HEAVY = (
    "torch",
    "transformers",
    "triton",
    "peft",
    "bitsandbytes",
    "galore_torch",
    "matplotlib",
    "pynvml",
)
LAYERS = [
    (
        0,
        "memplan.errors memplan.knobs memplan.breakdown memplan.workload memplan.gpus "
        "memplan.tape memplan.models memplan.units memplan.rows memplan.planfile memplan_kernels",
    ),
    (1, "memplan.programs memplan.runtime"),
    (2, "memplan.methods"),
    (3, "memplan.estimate memplan.measure memplan.plan memplan.sweep memplan.report"),
    (4, "memplan.cli memplan.plot memplan.__main__"),
]


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for layer, prefixes in LAYERS:
        for p in prefixes.split():
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    if best is None:
        if module == "memplan":
            return 0
        raise AssertionError(f"{module} is in no layer: add it to tests/test_layering.py")
    return best


def modules() -> dict[str, Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, at module top) for every import statement; `from a import b` counts
    as a.b when a.b is a module, else a. TYPE_CHECKING blocks are skipped."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - child.level + 1])
                    base = f"{base}.{child.module}" if child.module else base
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.append((sub if sub in MODULES else base, top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.ClassDef):
                visit(child, top)
            else:
                visit(child, top)

    visit(tree, True)
    return out


def internal(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def heavy_modules() -> set[str]:
    """Modules that import a heavy package at their top, directly or through another module."""
    heavy = {m for m in MODULES for n, top in imports(m) if top and n.split(".")[0] in HEAVY}
    changed = True
    while changed:
        changed = False
        for m in MODULES:
            if m in heavy:
                continue
            if any(top and internal(n) in heavy for n, top in imports(m)):
                heavy.add(m)
                changed = True
    return heavy


HEAVY_MODULES = heavy_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_down(module):
    own = layer_of(module)
    for name, _top in imports(module):
        target = internal(name)
        if target is None or target == module:
            continue
        assert layer_of(target) <= own, f"{module} (layer {own}) imports {target} (higher)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_at_top_unless_heavy(module):
    for name, top in imports(module):
        if top:
            continue
        target = internal(name)
        heavy = name.split(".")[0] in HEAVY or (target is not None and target in HEAVY_MODULES)
        stdlib_ok = target is None and name.split(".")[0] not in HEAVY
        assert heavy or stdlib_ok, f"{module} imports {name} inside a function: move it to the top"


def test_no_import_cycle():
    graph = {m: {internal(n) for n, _ in imports(m)} - {None, m} for m in MODULES}
    state: dict[str, int] = {}

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n] if n in path else [m, n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                walk(n, [*path, n])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            walk(m, [m])


def test_the_estimator_path_is_torch_free():
    for m in ("memplan.estimate", "memplan.plan", "memplan.methods", "memplan.programs"):
        if m in MODULES:
            assert m not in HEAVY_MODULES, f"{m} imports a heavy package at its top"


def test_every_package_is_installed():
    """A subpackage missing from pyproject's `packages` works in the editable checkout and is
    absent from a wheel: every folder with an __init__.py is listed."""
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))  # tomllib is 3.11+
    found = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"
