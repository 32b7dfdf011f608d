"""fastconv explain: where a convolution's bytes come from.

An analytic cache model per algorithm (model.py), a trace-driven cache
simulator of the kernels' loop nests (csrc/cachesim.cpp, simulate.py), measured
roofline ceilings (machine.py), pictures (pictures.py) and the conv-vs-linear
comparison (vs_linear.py); `fastconv explain` (cli.py) puts them together.
Importing this package installs the CPU cost models into the registry.
"""
from __future__ import annotations

from .. import registry
from .model import CPU_MODELS, cpu_cost_model


def install_cost_models() -> None:
    for name in CPU_MODELS:
        try:
            algo = registry.get(name)
        except ValueError:
            continue
        if algo.cost_model is None:
            registry.set_cost_model(name, cpu_cost_model(name))


install_cost_models()
