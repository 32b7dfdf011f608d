"""direct's AVX-512 tiles on 3x3 stride-1 layers (C = K) over plane sizes and widths.

    python dev/cpu/direct3x3_shapes.py

One thread, the thread's CPU time: the minimum of 5 runs of 0.1 s of
fastconv.conv2d(algo="direct") per shape, channels_last, GFLOP/s and share of the AVX-512
FMA peak (fastconv._C.fma_peak_gflops). It separates the plane size (7x7: pair tiles and a
one-row tile) from the width (the weights against L2) in ResNet-50's layer 3/4 shares.
"""
from __future__ import annotations

import statistics

import torch

import fastconv

import vs_onednn  # this directory is on sys.path when run as a script

SHAPES = [  # N, C = K, H = W
    (8, 128, 7), (8, 256, 7), (8, 512, 7),
    (8, 128, 14), (8, 256, 14), (8, 512, 14),
    (8, 128, 28), (8, 256, 28), (2, 512, 28),
]


def gflops(n: int, c: int, h: int) -> float:
    x = torch.randn(n, c, h, h).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3)
    run = lambda: fastconv.conv2d(x, w, None, 1, 1, algo="direct")  # noqa: E731
    run()
    times = [vs_onednn.timeit(run, 0.1) for _ in range(5)]
    return 2 * n * c * h * h * c * 9 / min(times) * 1e-9


def main():
    vs_onednn.use_threads(1)  # and the thread-CPU-time clock
    fastconv._C.fma_peak_gflops("avx512", 2_000_000)  # clock ramp
    peak = statistics.median(fastconv._C.fma_peak_gflops("avx512") for _ in range(7))
    print(f"AVX-512 FMA peak, 1 core: {peak:.1f} GFLOP/s")
    for n, c, h in SHAPES:
        g = gflops(n, c, h)
        print(f"N={n} C=K={c:4d} {h:2d}x{h:<2d} {g:7.1f} GFLOP/s = {100 * g / peak:5.1f}% of peak", flush=True)


if __name__ == "__main__":
    main()
