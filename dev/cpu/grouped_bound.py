"""The best forward ratio against oneDNN that any kernel could reach on ResNeXt-50's grouped
layers: per layer, oneDNN's time (F.conv2d, 1 thread) against the time of a kernel that runs
every multiply-add at the measured single-core FMA peak (fastconv._C.fma_peak_gflops, as
benchmarks/fma_peak.py) and has nothing else to do. Also fastconv's own time and its share
of that peak.

    python dev/cpu/grouped_bound.py --batch 1 8 --layout nchw nhwc [--target 2.0]

bound = t_oneDNN / t_peak is a hard upper bound on fastconv's ratio: a layer with bound < target
cannot reach the target on this core whatever the kernel ("no"). bound_mem = t_oneDNN /
max(t_peak, t_mem) also charges moving the input, output and weight once at the measured
single-thread copy rate (a 128 MiB copy, bytes read + written per second): the bound where the
tensors stream from memory rather than cache; bound >= target > bound_mem reads "from cache
only". One thread, the thread's CPU time, interleaved medians.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import fastconv
from fastconv.bench import tables

import vs_onednn

# vs_onednn.py's timer (this directory is on sys.path when run as a script), on the
# thread's CPU time: 1-thread ratios that hold on a shared machine.


def timeit(fn, min_time=0.03):
    return vs_onednn.timeit(fn, min_time)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--layout", nargs="+", default=["nchw", "nhwc"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--target", type=float, default=2.0)
    args = ap.parse_args()
    vs_onednn.use_threads(1)
    torch.manual_seed(0)
    isa = fastconv._C.cpu_isa()
    fastconv._C.fma_peak_gflops(isa, 2_000_000)  # warm up (clock ramp)
    peak = statistics.median(fastconv._C.fma_peak_gflops(isa) for _ in range(7))
    src, dst = torch.randn(1 << 25), torch.empty(1 << 25)
    bw = statistics.median(2 * src.nbytes / timeit(lambda: dst.copy_(src)) for _ in range(5))
    print(f"# FMA peak ({isa}, 1 core, median of 7): {peak:.0f} GFLOP/s; copy rate (1 thread, "
          f"read + written): {bw / 1e9:.1f} GB/s; target x{args.target}")
    print("| layout | N | layer | GFLOP | MB moved | t_peak ms | t_mem ms | oneDNN ms | fastconv ms "
          "| fastconv GF/s (% peak) | ratio now | bound | bound_mem | can reach |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for layout in args.layout:
        for batch in args.batch:
            for layer in tables.load("resnext", batch=batch, layout=layout):
                s = layer.spec
                mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
                w = torch.randn(s.K, s.C // s.groups, s.R, s.S).contiguous(memory_format=mf)
                kw = dict(stride=s.stride, padding=(s.padding[0], s.padding[2]),
                          dilation=s.dilation, groups=s.groups)
                f_ref = lambda: F.conv2d(x, w, **kw)
                f_mine = lambda: fastconv.conv2d(x, w, **kw)
                tr, tm = [], []
                with torch.no_grad():
                    for _ in range(args.repeats):
                        tr.append(timeit(f_ref))
                        tm.append(timeit(f_mine))
                r, m = statistics.median(tr), statistics.median(tm)
                flop = 2 * s.N * s.Ho * s.Wo * s.K * (s.C // s.groups) * s.R * s.S
                tp = flop / (peak * 1e9)
                moved = 4 * (x.numel() + w.numel() + s.N * s.K * s.Ho * s.Wo)
                tmem = moved / bw
                bound, bound_mem = r / tp, r / max(tp, tmem)
                verdict = ("no" if bound < args.target else
                           "yes" if bound_mem >= args.target else "from cache only")
                print(f"| {layout} | {batch} | {layer.name} | {flop/1e9:.3f} | {moved/1e6:.1f} "
                      f"| {tp*1e3:.3f} | {tmem*1e3:.3f} | {r*1e3:.3f} "
                      f"| {m*1e3:.3f} | {flop/m/1e9:.0f} ({100*flop/m/1e9/peak:.0f}%) | {r/m:.2f} "
                      f"| {bound:.2f} | {bound_mem:.2f} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
