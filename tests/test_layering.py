"""Dependencies point one way: spacefs -> mount -> engine.

Read from the source (every import statement of every module, including the ones inside
functions), so an import that only runs on a rare path is caught too. And in a fresh
interpreter, ``import spacefs.engine`` loads neither the mount nor pyfuse3/trio.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imports(package: str, path: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at ``path``, which is a
    module of ``package`` (relative imports resolved against it)."""
    tree = ast.parse(open(path).read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]  # may be modules
    return out


def allowed(layer: str, mod: str) -> bool:
    top = mod.split(".")[0]
    if top in ("pyfuse3", "trio"):
        return layer == "mount"
    if top != "spacefs":
        return True
    if mod.startswith("spacefs.engine"):
        return True
    if mod.startswith("spacefs.mount"):
        return layer == "mount"
    return False  # the top-level package (public API, CLI, io) sits above both


@pytest.mark.parametrize("layer", ["engine", "mount"])
def test_imports_point_down(layer):
    bad = []
    folder = os.path.join(REPO, layer)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    assert names
    for name in names:
        for line, mod in imports(f"spacefs.{layer}", os.path.join(folder, name)):
            if not allowed(layer, mod):
                bad.append(f"{layer}/{name}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from ..mount import tree\n    import trio\n")
    found = [m for _, m in imports("spacefs.engine", str(p))]
    assert "spacefs.mount" in found and "spacefs.mount.tree" in found and "trio" in found
    assert not allowed("engine", "spacefs.mount.tree") and not allowed("engine", "trio")
    assert not allowed("mount", "spacefs.random_access") and allowed("mount", "spacefs.engine.storage")


def test_importing_the_engine_loads_no_mount():
    code = ("import sys, spacefs.engine, spacefs.engine.recordpool, spacefs.engine.records;"
            "bad = [m for m in sys.modules if m.startswith(('spacefs.mount', 'pyfuse3', 'trio'))];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
