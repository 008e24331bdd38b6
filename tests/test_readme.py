"""The README's quick start runs as written (on a temporary path)."""

from __future__ import annotations

import os
import subprocess

from conftest import PYTHON, REPO


def test_quick_start_runs(tmp_path):
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index("```python", text.index("## Quick start")) + len("```python\n")
    code = text[start : text.index("```", start)].replace("/data/example_ds", str(tmp_path / "example_ds"))
    p = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "ChangeType.DELETE" in p.stdout
