"""fastconv explain: where a convolution's bytes come from.

An analytic cache model per algorithm (model.py), a trace-driven cache
simulator of the kernels' loop nests (csrc/cachesim.cpp, simulate.py), measured
roofline ceilings (machine.py), pictures (pictures.py) and the conv-vs-linear
comparison (vs_linear.py); `fastconv explain` (cli.py) puts them together.
Importing this package changes nothing: each algorithm's cost model is given by
the module that registers it (fastconv/_cpu.py names model.cpu_cost_model).
"""
