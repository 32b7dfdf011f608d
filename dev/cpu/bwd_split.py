"""Backward split: grad_input and grad_weight timed apart, fastconv (algo=auto) against
PyTorch's convolution_backward (oneDNN) with one output mask each, per layer.

    python dev/cpu/bwd_split.py --suite resnet50 --batch 8 --layout nhwc --filter 1x1
One thread, the thread's CPU time (--threads N: wall time), interleaved medians (as
vs_onednn.py). Prints per layer
the four times, the two ratios (oneDNN / fastconv) and the GFLOP/s of each of our passes
(each pass is the forward's 2·N·Ho·Wo·K·C/g·R·S FLOPs).
"""
from __future__ import annotations

import argparse
import statistics

import torch

import fastconv
from fastconv.bench import tables

import vs_onednn

# vs_onednn.py's timer (this directory is on sys.path when run as a script); its clock
# follows --threads (vs_onednn.use_threads).
timeit = vs_onednn.timeit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", nargs="+", default=["resnet50"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--layout", nargs="+", default=["nchw"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--algo", default="auto")
    ap.add_argument("--filter", default="")
    ap.add_argument("--threads", type=int, default=1, help=">1: wall time (needs a quiet machine)")
    args = ap.parse_args()
    vs_onednn.use_threads(args.threads)
    torch.manual_seed(0)
    for suite in args.suite:
        for layout in args.layout:
            for batch in args.batch:
                for layer in tables.load(suite, batch=batch, layout=layout):
                    if args.filter and args.filter not in layer.name:
                        continue
                    s = layer.spec
                    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                    x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
                    w = torch.randn(s.K, s.C // s.groups, s.R, s.S).contiguous(memory_format=mf)
                    pad = [s.padding[0], s.padding[2]]
                    y = torch.nn.functional.conv2d(x, w, stride=s.stride, padding=pad,
                                                   dilation=s.dilation, groups=s.groups)
                    gy = torch.randn_like(y)
                    algo = fastconv.select(s) if args.algo == "auto" else fastconv.registry.get(args.algo)
                    geo = (list(s.stride), list(s.padding), list(s.dilation), s.groups)
                    cb = torch.ops.aten.convolution_backward

                    def ref(mask):
                        return lambda: cb(gy, x, w, None, list(s.stride), pad, list(s.dilation),
                                          False, [0, 0], s.groups, mask)
                    fns = [ref([True, False, False]),
                           lambda: algo.grad_input(gy, w, [s.N, s.C, s.H, s.W], *geo),
                           ref([False, True, False]),
                           lambda: algo.grad_weight(gy, x, list(w.shape), *geo)]
                    ts = [[] for _ in fns]
                    with torch.no_grad():
                        for _ in range(args.repeats):
                            for t, f in zip(ts, fns):
                                t.append(timeit(f))
                    ri, mi, rw, mw = (statistics.median(t) for t in ts)
                    flop = 2 * s.N * y.shape[2] * y.shape[3] * s.K * (s.C // s.groups) * s.R * s.S
                    print(f"{suite} {layout} N={batch} {layer.name:32s} {algo.name:9s} "
                          f"gi {ri*1e3:7.3f}/{mi*1e3:7.3f} ms x{ri/mi:4.2f} {flop/mi/1e9:5.0f} GF/s | "
                          f"gw {rw*1e3:7.3f}/{mw*1e3:7.3f} ms x{rw/mw:4.2f} {flop/mw/1e9:5.0f} GF/s | "
                          f"sum x{(ri+rw)/(mi+mw):4.2f}", flush=True)


if __name__ == "__main__":
    main()
