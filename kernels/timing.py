"""The one GPU timer: GPU time of a call from replays of a CUDA graph.

Host launch overhead (tens of microseconds from Python) must not hide a 10 us kernel, so
`fn` is captured `calls` times in one CUDA graph and the graph replayed; each replay is
timed with CUDA events. Used by the tile tuner (kernels/_plan.tune), by
benchmarks/triton_vs_cudnn.py and by the experiments in dev/.
"""
from __future__ import annotations

import torch
import triton


def cuda_graph_time(fn, calls: int = 10, reps: int = 5) -> float:
    """Median GPU time (ms) of one fn() call over `reps` replays of a graph of `calls`
    calls. fn runs once first (compiles, tunes). Falls back to triton.testing.do_bench
    (host time included) where fn cannot be captured."""
    fn()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # noqa: BLE001 - e.g. a call that synchronizes
        return triton.testing.do_bench(fn, warmup=3, rep=15, return_mode="median")
    graph.replay()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return sorted(times)[len(times) // 2]
