"""Placeholder CLI wiring; the benchmark suite replaces this module."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("bench", help="time fastconv against PyTorch on real layer tables")
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=run)


def run(args):
    import time

    import torch
    import torch.nn.functional as F

    import fastconv

    x = torch.randn(1, 64, 56, 56)
    w = torch.randn(64, 64, 3, 3)
    for algo in ("im2col", "direct"):
        fastconv.conv2d(x, w, padding=1, algo=algo)
        t = time.perf_counter()
        fastconv.conv2d(x, w, padding=1, algo=algo)
        print(algo, f"{(time.perf_counter() - t) * 1e3:.2f} ms")
    t = time.perf_counter()
    F.conv2d(x, w, padding=1)
    print("torch", f"{(time.perf_counter() - t) * 1e3:.2f} ms")
