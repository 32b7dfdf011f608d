"""Share of the FMA peak the direct kernel reaches on ResNet-50's 3x3 layers and the stem.

    python dev/cpu/direct3x3_share.py [--batch 1 8] [--layout nchw nhwc]

One thread, the thread's CPU time (holds on a busy machine, caches aside): the median of 7
runs of fastconv.conv2d(algo="direct") per layer, 2 * MACs / time, divided by the AVX-512
FMA peak of one core measured the same way as benchmarks/fma_peak.py (a register-only FMA
loop, fastconv._C.fma_peak_gflops). benchmarks/fma_peak.py covers the stride-1 layers at
batch 8 on every ISA; this adds stride 2, the stem and batch 1, AVX-512 only.
"""
from __future__ import annotations

import argparse
import statistics

import torch

import fastconv
from fastconv.bench import tables

import vs_onednn  # this directory is on sys.path when run as a script


def gflops(layer, layout: str) -> float:
    s = layer.spec
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
    w = torch.randn(s.K, s.C // s.groups, s.R, s.S)
    pad = (s.padding[0], s.padding[2])
    run = lambda: fastconv.conv2d(x, w, None, s.stride, pad, algo="direct")  # noqa: E731
    run()
    times = [vs_onednn.timeit(run, 0.1) for _ in range(7)]
    macs = s.N * s.K * s.Ho * s.Wo * (s.C // s.groups) * s.R * s.S
    return 2 * macs / statistics.median(times) * 1e-9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--layout", nargs="+", default=["nchw", "nhwc"])
    args = ap.parse_args()
    vs_onednn.use_threads(1)  # and the thread-CPU-time clock
    assert fastconv._C.cpu_isa() == "avx512", "the direct tiles measured here are AVX-512's"
    fastconv._C.fma_peak_gflops("avx512", 2_000_000)  # clock ramp
    peak = statistics.median(fastconv._C.fma_peak_gflops("avx512") for _ in range(7))
    print(f"AVX-512 FMA peak, 1 core: {peak:.1f} GFLOP/s")
    for layout in args.layout:
        for batch in args.batch:
            for layer in tables.load("resnet50", batch=batch, layout=layout):
                if layer.spec.R * layer.spec.S == 1:
                    continue
                g = gflops(layer, layout)
                print(f"{layout} N={batch} {layer.name:22s} {g:7.1f} GFLOP/s = {100 * g / peak:5.1f}% of peak",
                      flush=True)


if __name__ == "__main__":
    main()
