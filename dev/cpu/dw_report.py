"""Depthwise layers (MobileNetV2, ConvNeXt-T): fastconv on AVX-512 and on AVX2 (the
path an AVX2-only machine runs) against oneDNN, forward or backward, plus each layer's
share of the measured copy bandwidth. Interleaved repeats of per-thread CPU time
(time.thread_time), so other processes on a shared machine do not count; 1 thread.
    python dev/cpu/dw_report.py --batch 1 8 --layout nchw nhwc [--backward] [--filter dw7]
--stat median (default): the median of --repeats 20 ms blocks. --stat min: the minimum of
--repeats short (~4 ms) blocks, for a machine shared with other jobs, where medians moved
1.5-3x between runs (others evict L2 and contend for memory, which thread time still
counts) and the least-disturbed block stayed within ~10-20%.
share = time of a torch copy moving the layer's minimal bytes (input + output +
weights) / fastconv time: 1.0 would be a layer running at copy speed.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import fastconv
from fastconv.bench import tables


def cpu_time(fn, min_time=0.02):
    """Thread CPU seconds per call of fn, over a block of about min_time."""
    fn()
    t0 = time.thread_time()
    fn()
    n = max(1, int(min_time / max(time.thread_time() - t0, 1e-7)))
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--layout", nargs="+", default=["nchw"])
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (median), 15 (min)")
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--filter", default="", help="only layers whose name contains this")
    ap.add_argument("--backward", action="store_true")
    args = ap.parse_args()
    repeats = args.repeats or (15 if args.stat == "min" else 5)
    block = 0.004 if args.stat == "min" else 0.02
    stat = min if args.stat == "min" else statistics.median
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ops = torch.ops.fastconv
    isa0 = fastconv._C.cpu_isa()
    for layout in args.layout:
        for batch in args.batch:
            rows = []
            for suite in ("mobilenetv2", "convnext_t"):
                for layer in tables.load(suite, batch=batch, layout=layout):
                    if "dw" not in layer.name or args.filter not in layer.name:
                        continue
                    s = layer.spec
                    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                    x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
                    w = torch.randn(s.K, 1, s.R, s.S)
                    pad = (s.padding[0], s.padding[2])
                    st, p4, dl = list(s.stride), list(s.padding), list(s.dilation)
                    y = F.conv2d(x, w, stride=s.stride, padding=pad, groups=s.groups)
                    nbytes = 4 * (x.numel() + y.numel() + w.numel())
                    if args.backward:  # reads dy, x, w; writes dx, dw
                        nbytes = 4 * (y.numel() + 2 * x.numel() + 2 * w.numel())
                    src = torch.randn(nbytes // 8)
                    dst = torch.empty_like(src)
                    f_copy = lambda: dst.copy_(src)
                    if args.backward:
                        gy = torch.randn_like(y)
                        ins = [s.N, s.C, s.H, s.W]
                        f_ref = lambda: torch.ops.aten.convolution_backward(
                            gy, x, w, None, st, list(pad), dl, False, [0, 0], s.groups, [True, True, False])
                        def f_mine():
                            ops.depthwise_conv2d_grad_input(gy, w, ins, st, p4, dl, s.groups)
                            ops.depthwise_conv2d_grad_weight(gy, x, list(w.shape), st, p4, dl, s.groups)
                    else:
                        f_ref = lambda: F.conv2d(x, w, stride=s.stride, padding=pad, groups=s.groups)
                        f_mine = lambda: fastconv.conv2d(x, w, stride=s.stride, padding=pad,
                                                         groups=s.groups, algo="auto")
                    t = {"ref": [], "avx512": [], "avx2": [], "copy": []}
                    with torch.no_grad():
                        for _ in range(repeats):
                            t["ref"].append(cpu_time(f_ref, block))
                            fastconv._C.set_max_isa(isa0)
                            t["avx512"].append(cpu_time(f_mine, block))
                            fastconv._C.set_max_isa("avx2")
                            t["avx2"].append(cpu_time(f_mine, block))
                            fastconv._C.set_max_isa(isa0)
                            t["copy"].append(cpu_time(f_copy, block))
                    m = {k: stat(v) for k, v in t.items()}
                    rows.append((layer.name, m))
                    print(f"{'bwd' if args.backward else 'fwd'} {layout} N={batch} {layer.name:20s} "
                          f"onednn {m['ref']*1e3:7.3f} ms  avx2(before) {m['avx2']*1e3:7.3f} ms x{m['ref']/m['avx2']:5.2f}  "
                          f"avx512(now) {m['avx512']*1e3:7.3f} ms x{m['ref']/m['avx512']:5.2f}  "
                          f"copy-bw share {m['copy']/m['avx512']:4.0%}", flush=True)
            for name in ("avx2", "avx512"):
                for fam in ("dw3x3", "dw7x7"):
                    r = [m["ref"] / m[name] for n, m in rows if fam in n]
                    if not r:
                        continue
                    g = math.exp(sum(map(math.log, r)) / len(r))
                    print(f"== {'bwd' if args.backward else 'fwd'} {layout} N={batch} {fam} {name}: geomean x{g:.2f} min x{min(r):.2f}")
                r = [m["ref"] / m[name] for n, m in rows]
                g = math.exp(sum(map(math.log, r)) / len(r))
                print(f"== {'bwd' if args.backward else 'fwd'} {layout} N={batch} all {name}: geomean x{g:.2f} min x{min(r):.2f}", flush=True)


if __name__ == "__main__":
    main()
