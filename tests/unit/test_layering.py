"""Enforces DESIGN.md §2: pure layers stay pure, arrows point down, pysyncobj stays in consensus/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = ("pgbalancer.pgwire", "pgbalancer.routing", "pgbalancer.cache", "pgbalancer.ha")
PURE_MODULES = (
    "pgbalancer.config",
    "pgbalancer.userlist",
    "pgbalancer.proxy.startup",
    "pgbalancer.proxy.prepared",
    "pgbalancer.proxy.sessionstate",
    "pgbalancer.proxy.admin_commands",
    "consensus.state",
    "pgbalancer.watchdog.decide",
    "pgbalancer.vip.rule",
    "pgbalancer.vip.commands",
)
IO_IMPORTS = ("trio", "socket", "select", "threading", "asyncio", "selectors", "subprocess", "pysyncobj")
SHELLS = (
    "pgbalancer.proxy",
    "pgbalancer.health",
    "pgbalancer.api",
    "pgbalancer.events",
    "pgbalancer.cli",
    "pgbalancer.watchdog.service",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, set[str]]:
    modules: dict[str, set[str]] = {}
    for package in ("pgbalancer", "consensus"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            imported: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
            modules[_module_name(path)] = imported
    return modules


MODULES = _all_modules()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_scan_found_the_code() -> None:
    assert "pgbalancer.node" in MODULES
    assert "pgbalancer.pgwire.scan" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, PURE_PACKAGES + PURE_MODULES)))
def test_pure_modules_do_no_io(module: str) -> None:
    bad = {i for i in MODULES[module] if _within(i, IO_IMPORTS)}
    assert not bad, f"{module} is pure but imports {sorted(bad)}"
    upward = {i for i in MODULES[module] if _within(i, (*SHELLS, "pgbalancer.node")) and i != module}
    upward -= {i for i in upward if i.startswith(module.rsplit(".", 1)[0])}
    assert not upward, f"{module} is pure but imports shells {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_consensus_imports_pysyncobj(module: str) -> None:
    if module.startswith("consensus"):
        return
    assert not any(_within(i, ("pysyncobj",)) for i in MODULES[module]), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("consensus")))
def test_consensus_never_imports_the_proxy(module: str) -> None:
    assert not any(_within(i, ("pgbalancer.proxy",)) for i in MODULES[module]), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "pgbalancer.node"))
def test_nothing_imports_the_wiring(module: str) -> None:
    if module == "pgbalancer.__main__":
        return
    assert "pgbalancer.node" not in MODULES[module], f"{module} imports pgbalancer.node (wiring is the top)"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "pgbalancer").rglob("*.py")) + sorted((ROOT / "consensus").rglob("*.py"))
)
def test_every_module_opens_with_a_docstring(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no module docstring"
