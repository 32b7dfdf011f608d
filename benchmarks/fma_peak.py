"""The measured FMA peak of one core, and the share of it the direct kernel reaches.

    python benchmarks/fma_peak.py [--out benchmarks/results/<machine>/fma_peak]

The peak is a register-only loop of independent float32 FMAs (fastconv._C.fma_peak_gflops,
csrc/fma_peak.cpp) per instruction set, the median of several runs. Then, on one thread,
fastconv.conv2d(algo="direct") times compute-bound 3x3 layers (ResNet-50's, batch 8) on each
path; the FLOP rate (2 * MACs / median time) is divided by that path's peak. Both clocks are
the thread's CPU time, so the shares hold on a busy machine (caches and memory bandwidth are
still shared).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import fastconv
from fastconv.bench import tables
from fastconv.bench.machine import describe

LAYERS = ("layer1_3x3_64", "layer2_3x3_128", "layer3_3x3_256", "layer4_3x3_512")


def peak(isa: str, runs: int = 7) -> float:
    fastconv._C.fma_peak_gflops(isa, 2_000_000)  # warm up (clock ramp)
    return statistics.median(fastconv._C.fma_peak_gflops(isa) for _ in range(runs))


def layer_gflops(layer, layout: str, isa: str) -> float:
    s = layer.spec
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
    w = torch.randn(s.K, s.C // s.groups, s.R, s.S)
    pad = (s.padding[0], s.padding[2])
    fastconv._C.set_max_isa(isa)
    try:
        fastconv.conv2d(x, w, None, s.stride, pad, algo="direct")
        times = []
        for _ in range(7):
            t0, n = time.thread_time(), 0
            while time.thread_time() - t0 < 0.15:
                fastconv.conv2d(x, w, None, s.stride, pad, algo="direct")
                n += 1
            times.append((time.thread_time() - t0) / n)
    finally:
        fastconv._C.set_max_isa(fastconv._C.cpu_isa_supported())
    macs = s.N * s.K * s.Ho * s.Wo * (s.C // s.groups) * s.R * s.S
    return 2 * macs / statistics.median(times) * 1e-9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="directory for fma_peak.json and fma_peak.md")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    order = ("avx512", "avx2", "portable")
    isas = [i for i in order[order.index(fastconv._C.cpu_isa_supported()):] if i != "portable"]
    peaks = {isa: peak(isa) for isa in isas}
    rows = []
    layers = [l for l in tables.load("resnet50", batch=args.batch) if l.name in LAYERS]
    for isa in isas:
        for layout in ("nchw", "nhwc"):
            for layer in layers:
                g = layer_gflops(layer, layout, isa)
                rows.append(dict(isa=isa, layout=layout, layer=layer.name, N=layer.spec.N,
                                 gflops=round(g, 1), peak_gflops=round(peaks[isa], 1),
                                 share=round(g / peaks[isa], 3)))
                print(f"{isa:7s} {layout} {layer.name:16s} N={layer.spec.N} {g:7.1f} GFLOP/s "
                      f"= {100 * g / peaks[isa]:5.1f}% of {peaks[isa]:.1f}", flush=True)
    lines = ["| ISA | FMA peak, 1 core (GFLOP/s) |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in peaks.items()]
    lines += ["", "| ISA | layout | layer | N | direct GFLOP/s | share of peak |",
              "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['isa']} | {r['layout']} | {r['layer']} | {r['N']} | {r['gflops']} | "
              f"{100 * r['share']:.1f}% |" for r in rows]
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        meta = describe("cpu", torch.float32, 1)
        with open(os.path.join(args.out, "fma_peak.json"), "w") as f:
            json.dump(dict(meta=meta, peaks=peaks, rows=rows), f, indent=1)
        with open(os.path.join(args.out, "fma_peak.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
