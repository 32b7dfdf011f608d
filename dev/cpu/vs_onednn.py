"""fastconv.conv2d (algo=auto or --algo) against F.conv2d (oneDNN) on the CPU, per layer.

Interleaved medians in one process: each repeat times both, so drift hits both alike.
    python dev/cpu/vs_onednn.py --suite resnet50 --batch 1 8 --layout nchw nhwc --threads 2
Prints one row per layer (ms, ratio = oneDNN time / fastconv time) and the geomean per group.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import fastconv
from fastconv.bench import machine, tables


# With --threads 1 the clock is the thread's CPU time: time the thread spends
# descheduled (other processes on a busy machine) is not counted, so ratios hold
# on a loaded machine. Multi-threaded runs need wall time and a quiet machine.
CLOCK = time.perf_counter


def use_threads(threads: int) -> None:
    """torch's thread count, and the clock that goes with it (see CLOCK)."""
    global CLOCK
    torch.set_num_threads(threads)
    CLOCK = time.thread_time if threads == 1 else time.perf_counter


def timeit(fn, min_time=0.02):
    fn()
    t0 = CLOCK()
    fn()
    dt = CLOCK() - t0
    n = max(1, int(min_time / max(dt, 1e-7)))
    t0 = CLOCK()
    for _ in range(n):
        fn()
    return (CLOCK() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", nargs="+", default=["resnet50"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--layout", nargs="+", default=["nchw"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--algo", default="auto")
    ap.add_argument("--backward", action="store_true", help="grad_input + grad_weight")
    ap.add_argument("--filter", nargs="+", default=[], help="layers whose name holds any of these")
    ap.add_argument("--module", action="store_true", help="fastconv.nn.Conv2d vs nn.Conv2d (eval)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc as it is (default: freed pages kept, as in fastconv bench)")
    args = ap.parse_args()
    if not args.system_malloc:
        print("allocator:", machine.keep_freed_pages())
    use_threads(args.threads)
    torch.manual_seed(0)
    for suite in args.suite:
        for layout in args.layout:
            for batch in args.batch:
                ratios = []
                for layer in tables.load(suite, batch=batch, layout=layout):
                    if args.filter and not any(f in layer.name for f in args.filter):
                        continue
                    s = layer.spec
                    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                    x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
                    w = torch.randn(s.K, s.C // s.groups, s.R, s.S).contiguous(memory_format=mf)
                    pad = (s.padding[0], s.padding[2])
                    kw = dict(stride=s.stride, padding=pad, dilation=s.dilation, groups=s.groups)
                    if args.module:
                        ref = torch.nn.Conv2d(s.C, s.K, (s.R, s.S), bias=False, **kw).eval()
                        mine = fastconv.nn.Conv2d(s.C, s.K, (s.R, s.S), bias=False, algo=args.algo, **kw).eval()
                        mine.load_state_dict(ref.state_dict())
                        ref, mine = ref.to(memory_format=mf), mine.to(memory_format=mf)
                        with torch.no_grad():
                            f_ref = lambda: ref(x)
                            f_mine = lambda: mine(x)
                            f_ref(); f_mine()
                    elif args.backward:
                        y = F.conv2d(x, w, **kw)
                        gy = torch.randn_like(y)
                        ins = [s.N, s.C, s.H, s.W]
                        algo = fastconv.select(s) if args.algo == "auto" else fastconv.registry.get(args.algo)
                        p4 = list(s.padding)
                        def f_ref():
                            torch.ops.aten.convolution_backward(gy, x, w, None, list(s.stride), list(pad), list(s.dilation), False, [0, 0], s.groups, [True, True, False])
                        def f_mine():
                            algo.grad_input(gy, w, ins, list(s.stride), p4, list(s.dilation), s.groups)
                            algo.grad_weight(gy, x, list(w.shape), list(s.stride), p4, list(s.dilation), s.groups)
                    else:
                        f_ref = lambda: F.conv2d(x, w, **kw)
                        f_mine = lambda: fastconv.conv2d(x, w, algo=args.algo, **kw)
                    with torch.no_grad():
                        tr, tm = [], []
                        for _ in range(args.repeats):
                            tr.append(timeit(f_ref))
                            tm.append(timeit(f_mine))
                    r, m = statistics.median(tr), statistics.median(tm)
                    ratios.append(r / m)
                    name = fastconv.select(s).name if args.algo == "auto" else args.algo
                    print(f"{suite:12s} {layout} N={batch} {layer.name:34s} {name:10s} onednn {r*1e3:8.3f} ms  fastconv {m*1e3:8.3f} ms  x{r/m:5.2f}", flush=True)
                if ratios:
                    g = math.exp(sum(map(math.log, ratios)) / len(ratios))
                    print(f"== {suite} {layout} N={batch}: geomean x{g:.2f}  min x{min(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
