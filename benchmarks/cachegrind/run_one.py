"""Runs one fastconv kernel once under valgrind (see validate.py).

    python run_one.py ALGO N,C,H,W K,Cg,R,S STRIDE PAD GROUPS LAYOUT {0|1}

The kernel is first called on a tiny conv (lazy initialisation). With
FASTCONV_CGCTL=path/to/cgctl.so the measured call is bracketed by callgrind
client requests (run valgrind with --instr-atstart=no): only the conv is
simulated, starting from (nearly) empty caches like fastconv's simulator; a
first bracketed call of the tiny conv gives the fixed per-call cost. Without it
(plain cachegrind), the last argument 0 skips the measured conv, for a
baseline run to subtract, and a sweep of an 8 MiB buffer empties the caches.
"""
import ctypes
import os
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
ctl = ctypes.CDLL(os.environ["FASTCONV_CGCTL"]) if os.environ.get("FASTCONV_CGCTL") else None
if ctl is None:
    sweep = torch.ones(8 << 20 >> 2)  # 8 MiB: evicts a 2 MiB LL
    float(sweep.sum())
args = (x, wgt, None, [stride, stride], [pad] * 4, [1, 1], groups)
if ctl is not None:
    # First dump: the tiny conv again, instrumented: the fixed cost of a call
    # (dispatch, output allocation, checks) that validate.py subtracts.
    ctl.cg_start()
    a.forward(tiny_x, tiny_w, None, [1, 1], [0, 0, 0, 0], [1, 1], groups)
    ctl.cg_stop()
if go == "1":
    if ctl is not None:
        ctl.cg_start()
    y = a.forward(*args)
    if ctl is not None:
        ctl.cg_stop()
if os.environ.get("FASTCONV_CG_INFO"):
    # The ISA the kernels ran with under valgrind (which hides AVX-512 from CPUID).
    import json

    with open(os.environ["FASTCONV_CG_INFO"], "w") as f:
        json.dump({"cpu_isa": fastconv._C.cpu_isa(), "cpu_isa_supported": fastconv._C.cpu_isa_supported()}, f)
