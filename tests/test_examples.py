"""Every worked example in scripts/examples/ runs to its end as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "scripts", "examples")


def run_example(name: str, tmp_path, timeout: int = 240) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, f"{name} failed:\n{p.stdout}\n{p.stderr[-4000:]}"
    lines = p.stdout.strip().splitlines()
    assert lines and lines[-1] == "OK", p.stdout
    return p.stdout


def test_coco_detection(tmp_path):
    out = run_example("coco_detection.py", tmp_path)
    assert "stored 10 images" in out
    assert "objects per category (DuckDB)" in out
    assert "image 2 labels at 'raw': ['red_box', 'red_box', 'red_box']" in out
    assert "diff raw..reviewed: [(2, 'DELETE', [2]), (2, 'ADD', [2]), (3, 'DELETE', [5])]" in out


def test_label_studio(tmp_path):
    out = run_example("label_studio.py", tmp_path)
    assert "diff round-1..round-2: {'added': [9, 10], 'relabeled': [3, 5], 'removed': [7, 8]}" in out
    assert "task 5: ['Cat'] -> ['Dog']" in out
    import json

    tasks = json.loads((tmp_path / "import_round1.json").read_text())
    assert [t["id"] for t in tasks] == list(range(1, 9))
    assert all(set(t) == {"id", "data", "annotations"} for t in tasks)


def test_huggingface_in_out(tmp_path):
    out = run_example("huggingface_in_out.py", tmp_path)
    assert "imported 12 rows into new dataset shapes (snapshot 1)" in out
    assert "export_hf(version='imported') -> load_from_disk: 12 rows" in out
    assert os.path.isdir(tmp_path / "hf_cli")


def test_embedding_index(tmp_path):
    out = run_example("embedding_index.py", tmp_path)
    assert "initial index: +8 -0 from the MV's diff" in out
    assert "index updated from the MV's diff: +2 -2" in out
    assert "'my kitten is napping in the sun' -> 2 A tabby cat" in out


def test_segment_anything(tmp_path):
    out = run_example("segment_anything.py", tmp_path)
    assert "MV refreshed on Ray: 4 masks" in out
    assert "masks read through the mount match the drawn disks: [1, 2, 3, 4]" in out
    assert "refresh after 2 new images: +2 rows" in out
    assert not os.path.ismount(tmp_path / "mnt")


def test_webdataset_ray(tmp_path):
    out = run_example("webdataset_ray.py", tmp_path)
    assert "imported 320 rows into new dataset samples (snapshot 1)" in out
    assert "snapshot 2, +160 rows" in out
    assert "ds.ray_dataset().count(): 480" in out
    assert "exported 5 shards with 480 samples" in out


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_")))
def test_every_example_is_tested_and_documented(name):
    """A new example needs a test here and a section in scripts/examples/README.md."""
    assert f"test_{name[:-3]}" in globals(), f"no test for {name}"
    with open(os.path.join(EXAMPLES, "README.md")) as f:
        assert name in f.read(), f"{name} has no README section"
