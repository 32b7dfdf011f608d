"""Runs one fastconv kernel once, for valgrind's cachegrind (see validate.py).

    python run_one.py ALGO N,C,H,W K,Cg,R,S STRIDE PAD GROUPS LAYOUT {0|1}

With the last argument 0 it does everything except the measured conv (the
baseline that validate.py subtracts). Both runs first call the kernel on a
tiny conv (lazy initialisation) and sweep a buffer much larger than the last
simulated cache, so the measured conv starts with cold caches like the
simulator.
"""
import sys

import torch

torch.set_num_threads(1)  # cachegrind serialises threads; one thread = one loop order
import fastconv  # noqa: E402
from fastconv import registry  # noqa: E402

algo, inp, wt, stride, pad, groups, layout, go = sys.argv[1:9]
n, c, h, w = map(int, inp.split(","))
k, cg, r, s = map(int, wt.split(","))
stride, pad, groups = int(stride), int(pad), int(groups)
a = registry.get(algo)
x = torch.randn(n, c, h, w)
wgt = torch.randn(k, cg, r, s)
if layout == "nhwc":
    x = x.contiguous(memory_format=torch.channels_last)
    wgt = wgt.contiguous(memory_format=torch.channels_last)
tiny_x = torch.randn(1, groups, 3, 3)
tiny_w = torch.randn(groups, 1, 1, 1)
if layout == "nhwc":
    tiny_x = tiny_x.contiguous(memory_format=torch.channels_last)
    tiny_w = tiny_w.contiguous(memory_format=torch.channels_last)
a.forward(tiny_x, tiny_w, None, [1, 1], [0, 0, 0, 0], [1, 1], groups)
sweep = torch.ones(8 << 20 >> 2)  # 8 MiB: evicts a 2 MiB LL
float(sweep.sum())
if go == "1":
    y = a.forward(x, wgt, None, [stride, stride], [pad] * 4, [1, 1], groups)
