"""nets/forward.py: the one interface to the speed backends (names, overrides, the eager reference path)."""

from __future__ import annotations

import sys

import pytest
import torch

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import backend_record
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.nets.forward import EagerForward, net_forward, resolve_backend


def test_backend_names_are_checked_and_the_environment_overrides_the_config(monkeypatch):
    monkeypatch.delenv("PTMDD_BACKEND", raising=False)
    assert resolve_backend("Eager") == "eager"
    with pytest.raises(PtmddError, match=r"unknown backend 'fast' in the config's backend; use one of auto, eager"):
        resolve_backend("fast")
    monkeypatch.setenv("PTMDD_BACKEND", "eager")
    assert resolve_backend("cpu_kernels") == "eager"
    assert isinstance(net_forward(build_net("ConvNetW32", 1, 10, (28, 28)), "auto"), EagerForward)
    monkeypatch.setenv("PTMDD_BACKEND", "gpu")
    with pytest.raises(PtmddError, match="environment variable PTMDD_BACKEND"):
        resolve_backend("auto")


def test_eager_forward_is_the_module_with_chunks_and_parameter_overrides():
    torch.manual_seed(0)
    net = build_net("ConvNetW32", 1, 10, (28, 28)).eval()
    fwd = EagerForward(net, chunk=4)
    x = torch.randn(10, 1, 28, 28)
    assert [p.shape[0] for p in fwd.chunks(x, 4)] == [4, 4, 2]  # 3 chunks of ceil(10 / 3)
    torch.testing.assert_close(fwd(x), net(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fwd.embed(x), net.embed(x), rtol=1e-5, atol=1e-6)
    params = {k: v * 0.5 for k, v in net.named_parameters()}
    expect = torch.func.functional_call(net, params, (x,))
    torch.testing.assert_close(fwd(x, params), expect, rtol=1e-5, atol=1e-6)
    assert fwd.class_grads(x, torch.zeros(10, dtype=torch.long), 10) is None  # the generic DC path is used


def test_eager_loads_no_backend_and_the_record_names_what_was_asked(monkeypatch):
    monkeypatch.delenv("PTMDD_BACKEND", raising=False)
    before = "ptmdd_lightning.backends.cpu" in sys.modules
    fwd = net_forward(build_net("MLP", 1, 10, (28, 28)), "eager")
    assert isinstance(fwd, EagerForward)
    if not before:
        assert "ptmdd_lightning.backends.cpu" not in sys.modules
    fwd(torch.randn(2, 1, 28, 28))
    rec = backend_record()
    assert "eager" in rec["requested"] and "eager" in rec["ran"]


def test_a_net_the_backend_does_not_take_runs_as_the_module(monkeypatch):
    monkeypatch.delenv("PTMDD_BACKEND", raising=False)
    net = build_net("AlexNet", 1, 10, (28, 28))
    for name in ("auto", "cpu_kernels", "compile"):
        fwd = net_forward(net, name)
        assert isinstance(fwd, EagerForward) and type(fwd) is EagerForward, name
