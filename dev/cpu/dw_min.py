"""Depthwise layers (MobileNetV2, ConvNeXt-T), fastconv (algo=auto, or the depthwise ops
for --backward) against oneDNN, 1 thread, as the minimum over interleaved repeats of
per-thread CPU time, plus each layer's share of the measured copy bandwidth.

On a machine shared with other processes the medians of dw_report.py moved 1.5-3x between
runs (oneDNN included: other processes evict L2 and contend for memory, which thread time
still counts); the minimum over 15 short (~4 ms) repeats is the run least disturbed, and
stayed within ~10-20% between runs.
    python dev/cpu/dw_min.py --layout nchw nhwc --batch 1 8 [--backward] [--filter dw7]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import fastconv
from fastconv.bench import tables


def per_call(fn, n):
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", nargs="+", default=["nchw"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--filter", default="")
    ap.add_argument("--backward", action="store_true", help="grad_input + grad_weight")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ops = torch.ops.fastconv
    tag = "bwd" if args.backward else "fwd"
    for layout in args.layout:
        for batch in args.batch:
            ratios = {}
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
                    if args.backward:  # reads dy, x, w; writes dx, dw
                        nbytes = 4 * (y.numel() + 2 * x.numel() + 2 * w.numel())
                        gy = torch.randn_like(y)
                        ins = [s.N, s.C, s.H, s.W]
                        f_ref = lambda: torch.ops.aten.convolution_backward(
                            gy, x, w, None, st, list(pad), dl, False, [0, 0], s.groups, [True, True, False])

                        def f_mine():
                            ops.depthwise_conv2d_grad_input(gy, w, ins, st, p4, dl, s.groups)
                            ops.depthwise_conv2d_grad_weight(gy, x, list(w.shape), st, p4, dl, s.groups)
                    else:
                        nbytes = 4 * (x.numel() + y.numel() + w.numel())
                        f_ref = lambda: F.conv2d(x, w, stride=s.stride, padding=pad, groups=s.groups)
                        f_mine = lambda: fastconv.conv2d(x, w, stride=s.stride, padding=pad,
                                                         groups=s.groups, algo="auto")
                    src = torch.randn(nbytes // 8)
                    dst = torch.empty_like(src)
                    f_copy = lambda: dst.copy_(src)
                    with torch.no_grad():
                        f_ref(); f_mine(); f_copy()
                        t0 = time.thread_time()
                        f_mine()
                        n = max(1, int(0.004 / max(time.thread_time() - t0, 1e-7)))
                        t = {"ref": [], "mine": [], "copy": []}
                        for _ in range(args.repeats):
                            t["ref"].append(per_call(f_ref, n))
                            t["mine"].append(per_call(f_mine, n))
                            t["copy"].append(per_call(f_copy, n))
                    m = {k: min(v) for k, v in t.items()}
                    ratios[layer.name] = m["ref"] / m["mine"]
                    print(f"{tag} {layout} N={batch} {layer.name:20s} onednn {m['ref']*1e3:7.3f} ms  "
                          f"fastconv {m['mine']*1e3:7.3f} ms  x{m['ref']/m['mine']:5.2f}  "
                          f"copy-bw share {m['copy']/m['mine']:4.0%}", flush=True)
            for fam in ("dw3x3", "dw7x7", ""):
                r = [v for k, v in ratios.items() if fam in k]
                if r:
                    g = math.exp(sum(map(math.log, r)) / len(r))
                    print(f"== {tag} {layout} N={batch} {fam or 'all'}: geomean x{g:.2f} min x{min(r):.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
