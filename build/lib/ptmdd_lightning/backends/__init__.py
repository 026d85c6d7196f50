"""Optional speed backends, kept apart from the DD code.

A backend makes the nets of :mod:`ptmdd_lightning.nets` run faster without changing what they compute. The core and
the Lightning modules never import a backend: they ask :func:`ptmdd_lightning.nets.forward.net_forward` for a net's
forward by the backend's name from the run's config, and the backend's module is imported then. Only
:mod:`ptmdd_lightning.backends.cpu` exists (ConvNet-3 on CPUs: C++ kernels, a compiled channels-last formulation).
"""
