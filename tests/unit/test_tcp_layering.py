"""The sans-IO rule: wire, tcp and stack do no I/O, read no clock, start no task."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import usertcp

FORBIDDEN = {"asyncio", "socket", "time", "random", "os", "structlog", "selectors", "threading"}
PACKAGE = Path(usertcp.__file__).parent
CORE = sorted([*PACKAGE.joinpath("wire").glob("*.py"), *PACKAGE.joinpath("tcp").glob("*.py"),
               PACKAGE / "stack.py"])
# Sibling layers the core must not reach either (they are allowed to do I/O).
UPPER = {"usertcp.aio", "usertcp.phy", "usertcp.apps", "usertcp.cli", "usertcp.log"}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module an import statement in `path` names, relative ones resolved."""
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_core_sources_found():
    assert len(CORE) >= 15
    assert PACKAGE / "tcp" / "connection.py" in CORE


def test_core_sources_import_no_io_modules():
    offenders = {}
    for path in CORE:
        bad = {m for m in imported_modules(path)
               if m.split(".")[0] in FORBIDDEN or any(m == u or m.startswith(u + ".")
                                                      for u in UPPER)}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


def test_wire_imports_nothing_from_tcp_or_stack():
    for path in PACKAGE.joinpath("wire").glob("*.py"):
        for m in imported_modules(path):
            assert not m.startswith(("usertcp.tcp", "usertcp.stack")), (path, m)


def test_ast_scan_catches_an_offender(tmp_path):
    """The scanner itself must see every kind of import, also inside functions."""
    probe = tmp_path / "probe.py"
    probe.write_text("import struct\nimport socket as s\n"
                     "def f():\n    import time\n    from os import path\n"
                     "    from ..aio import driver\n    from . import seq\n")
    names = imported_modules(probe, "usertcp.tcp")
    assert {"struct", "socket", "time", "os", "usertcp.aio", "usertcp.aio.driver",
            "usertcp.tcp", "usertcp.tcp.seq"} <= names


_PROBE = r"""
import importlib, json, sys, types
before = set(sys.modules)
# Load the core without running usertcp/__init__.py, which pulls in the asyncio layer.
pkg = types.ModuleType("usertcp")
pkg.__path__ = [sys.argv[1]]
sys.modules["usertcp"] = pkg
for name in ("usertcp.wire", "usertcp.tcp", "usertcp.stack", "usertcp.wire.packet",
             "usertcp.tcp.connection", "usertcp.tcp.timewait"):
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_the_core_loads_no_io_modules():
    out = subprocess.run([sys.executable, "-I", "-c", _PROBE, str(PACKAGE)], check=True,
                         capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    assert "usertcp.stack" in loaded and "usertcp.tcp.connection" in loaded
    bad = {m for m in loaded if m.split(".")[0] in FORBIDDEN
           or any(m == u or m.startswith(u + ".") for u in UPPER)}
    assert bad == set()
