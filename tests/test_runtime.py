"""ptmdd_lightning.runtime: the allocator setting is applied once on Linux/glibc and can be turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = ("import ctypes, sys\n"
          "from ptmdd_lightning.runtime import keep_freed_memory\n"
          "print(keep_freed_memory())\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_on_glibc_and_obeys_the_opt_out():
    env_on = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert env_on.stdout.strip() == "True"
    off = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={"PTMDD_MALLOC_TUNE": "0", "PATH": ""})
    assert off.stdout.strip() == "False"


def test_a_cpu_fast_net_keeps_freed_memory(monkeypatch):
    from ptmdd_lightning import runtime
    from ptmdd_lightning.nets import build_net
    from ptmdd_lightning.nets import fast as fast_mod

    calls = []
    monkeypatch.setattr(fast_mod, "keep_freed_memory", lambda: calls.append(1) or True)
    fast_mod.FastNet(build_net("ConvNetD1", 1, 3, (28, 28)))
    assert calls == [1]
    assert runtime.keep_freed_memory.cache_info().maxsize == 1  # once per process
