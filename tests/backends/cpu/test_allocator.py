"""The CPU backend's allocator setting: applied only on opt-in, once, on Linux/glibc, and it can be turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = (
    "import ctypes, sys\n"
    "from ptmdd_lightning.backends.cpu.allocator import keep_freed_memory\n"
    "print(keep_freed_memory())\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_on_glibc_and_obeys_the_opt_out():
    env_on = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert env_on.stdout.strip() == "True"
    off = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={"PTMDD_MALLOC_TUNE": "0", "PATH": ""},
    )
    assert off.stdout.strip() == "False"


_NO_SIDE_EFFECT = """
import torch
from ptmdd_lightning.backends.cpu import allocator
from ptmdd_lightning.machine import backend_record
from ptmdd_lightning.modules import Distiller
import ptmdd_lightning.main
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.nets.forward import keep_freed_memory, net_forward
net = build_net("ConvNetD1", 1, 3, (28, 28))
net_forward(net, "auto", compile=False)(torch.randn(2, 1, 28, 28))
Distiller(ipc=1)
print(allocator.keep_freed_memory.cache_info().currsize, backend_record()["cpu"]["keep_freed_memory"])
keep_freed_memory()
print(allocator.keep_freed_memory.cache_info().currsize, backend_record()["cpu"]["keep_freed_memory"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_importing_and_building_nets_change_no_process_state_until_a_run_opts_in():
    env = {"PTMDD_CPU_KERNELS": "0", "PATH": ""}  # the allocator only: no kernel build in this probe
    out = subprocess.run(
        [sys.executable, "-c", _NO_SIDE_EFFECT], capture_output=True, text=True, check=True, env=env
    ).stdout.split("\n")
    assert out[0] == "0 False"  # imports, a net, a forward and a module: mallopt never called
    assert out[1] == "1 True"  # the explicit opt-in applies it and the run's record says so


_NO_BUILD = """
import os, torch
from ptmdd_lightning.backends.cpu import kernels
from ptmdd_lightning.machine import machine_record
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.nets.forward import net_forward
net = build_net("ConvNetW32", 1, 10, (28, 28))
fast = net_forward(net, "cpu_kernels")
x = torch.randn(3, 1, 28, 28)
torch.testing.assert_close(fast(x), net(x))
rec = machine_record()["backend"]
print(fast.kernels, rec["requested"], rec["ran"], rec["cpu"]["kernels"], rec["cpu"]["kernels_reason"])
"""


def test_a_failed_kernel_build_runs_the_module_and_the_record_says_why(tmp_path):
    """No compiler (CXX points to a missing program, an empty cache): the module runs, results.json says why."""
    import os

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PTMDD_")},  # no backend overrides
        "CXX": str(tmp_path / "no-such-compiler"),
        "PTMDD_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _NO_BUILD], capture_output=True, text=True, env=env, check=True
    )
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("False ['cpu_kernels'] ['eager'] False build or load failed"), proc.stdout + proc.stderr
