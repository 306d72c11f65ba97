"""The GPU check's scripts where they refuse: a kit over its size limit, a folder that is not a kit, a check without
its kit. The check itself is rehearsed on CPU end to end by `make gpu-rehearsal` (CI runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, env=environment, timeout=300
    )


def test_the_kit_is_refused_over_its_limit_and_removed(tmp_path):
    kit = tmp_path / "kit"
    done = _script("gpu_kit.sh", str(kit), GPU_KIT_LIMIT_MIB="1")  # the data slice alone is about 4 MiB
    assert done.returncode == 1
    assert "refused" in done.stderr and "over the 1 MiB limit" in done.stderr and "data.jsonl" in done.stderr
    assert not kit.exists()


def test_the_kit_never_empties_a_folder_that_is_not_a_kit(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    done = _script("gpu_kit.sh", str(tmp_path))
    assert done.returncode == 2 and "is not an earlier kit" in done.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_the_check_without_its_kit_says_how_to_build_one(tmp_path):
    done = _script("gpu_check.sh", GPU_CHECK_KIT=str(tmp_path / "none"), OUT=str(tmp_path / "out"))
    assert done.returncode == 2 and "bash benchmarks/gpu_kit.sh" in done.stderr
