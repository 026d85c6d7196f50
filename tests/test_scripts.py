"""The shell scripts parse (bash -n), and the GPU check refuses to run without its output folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_needs_an_output_folder():
    script = next(p for p in SCRIPTS if p.name == "gpu_check.sh")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "usage: bash scripts/gpu_check.sh OUTDIR" in proc.stderr
