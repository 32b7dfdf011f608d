"""ResNet-50's 1x1 layers: our packed AVX-512 GEMM (im2col's 1x1 path, per call and on cached
panels) against MKL's sgemm on the same matrices (torch.mm, one thread) and oneDNN
(F.conv2d), in GFLOP/s and as a share of the FMA peak (benchmarks/fma_peak.py).

    python dev/cpu/pointwise_gemm.py --batch 1 8 --layout nchw nhwc

One thread, thread CPU time, interleaved medians (as dev/cpu/vs_onednn.py). The model: a
1x1 layer is 2·P·C·K flops on (P·C + C·K + P·K)·4 bytes; at ResNet-50's sizes every layer
is above the ridge (>= 20 flops/byte), so the bound is the FMA peak; what is left is the
tile's efficiency (pixel tails: 49 = 4 tiles of 12-13 rows of 14) and the weight packing
a per-call path pays (C·K·8 bytes; at P = 49 that is ~1/12 of the flops' time).
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import fastconv
from fastconv.bench import tables

from dw_report import cpu_time as timeit  # dev/cpu, the script's own folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--layout", nargs="+", default=["nchw", "nhwc"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--filter", default="1x1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    peak = fastconv._C.fma_peak_gflops("avx512", 20_000_000)
    print(f"FMA peak (1 thread, AVX-512): {peak:.0f} GFLOP/s")
    ops = torch.ops.fastconv
    for layout in args.layout:
        mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        for batch in args.batch:
            for layer in tables.load("resnet50", batch=batch, layout=layout):
                s = layer.spec
                if s.R * s.S != 1 or args.filter not in layer.name and "downsample" not in layer.name:
                    continue
                x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
                w = torch.randn(s.K, s.C, 1, 1).contiguous(memory_format=mf)
                st = list(s.stride)
                geo = (st, [0, 0, 0, 0], [1, 1], 1)
                packed = ops.pointwise_pack_weight(w)
                xs = x[:, :, ::st[0], ::st[1]].contiguous(memory_format=mf)
                P = s.N * s.Ho * s.Wo
                w2 = w.reshape(s.K, s.C)
                if layout == "nhwc":  # y[P][K] = x[P][C] @ W^T
                    a = xs.permute(0, 2, 3, 1).reshape(P, s.C)
                    mkl = lambda: torch.mm(a, w2.t())
                else:  # y[n][K][HW] = W @ x[n][C][HW], per image
                    xm = xs.reshape(s.N, s.C, s.Ho * s.Wo)
                    mkl = lambda: [torch.mm(w2, xm[n]) for n in range(s.N)]
                fns = dict(
                    onednn=lambda: F.conv2d(x, w, stride=s.stride),
                    mkl=mkl,
                    ours=lambda: ops.im2col_conv2d(x, w, None, *geo),
                    ours_packed=lambda: ops.pointwise_conv2d_packed(x, packed, list(w.shape), None, *geo),
                )
                times = {k: [] for k in fns}
                with torch.no_grad():
                    for _ in range(args.repeats):
                        for k, f in fns.items():
                            times[k].append(timeit(f))
                flops = 2 * P * s.C * s.K
                row = "  ".join(f"{k} {flops / statistics.median(t) / 1e9:5.0f}"
                                for k, t in times.items())
                best = statistics.median(times["ours_packed"])
                print(f"{layout} N={batch} {layer.name:34s} P={P:6d} GFLOP/s: {row}  "
                      f"packed {100 * flops / best / 1e9 / peak:3.0f}% of peak", flush=True)


if __name__ == "__main__":
    main()
