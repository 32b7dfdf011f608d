"""The timing harness: one `measure(fn)` for every kernel and baseline, CPU and GPU.

CPU: torch.utils.benchmark.Timer.blocked_autorange at a fixed thread count; each sample is one
block's time divided by the block size. GPU: triton.testing.do_bench, which synchronizes, times
every call with CUDA events and flushes the L2 cache before each call; each sample is one call.
We keep every sample and report the median with its spread (quartiles and min/max), never a mean:
a shared machine's noise is one-sided (preemption only ever adds time).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch

# Seconds of timed samples per CPU measurement (blocked_autorange's min_run_time).
CPU_MIN_RUN_TIME_S = 0.2
# Milliseconds of timed calls per GPU measurement (do_bench's rep) and of warm-up before them.
GPU_REP_MS = 100
GPU_WARMUP_MS = 25


@dataclass(frozen=True)
class Timing:
    """Per-call times in milliseconds: median and spread over `n` samples."""
    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "Timing":
        if not samples_ms:
            raise ValueError("no timing samples")
        t = torch.tensor(list(samples_ms), dtype=torch.float64)
        q = torch.quantile(t, torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64)).tolist()
        return cls(q[0], q[1], q[2], t.min().item(), t.max().item(), len(samples_ms))

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    def contains(self, ms: float) -> bool:
        """Whether `ms` lies within this measurement's spread (min..max)."""
        return self.min_ms <= ms <= self.max_ms

    def as_dict(self, prefix: str) -> dict:
        return {f"{prefix}_{k}" if k != "median_ms" else f"{prefix}_ms": v for k, v in asdict(self).items()}


class Rotating:
    """Calls fn(*args) with the next argument tuple from a pool of fresh random inputs, so no call
    reads exactly what the previous call left in cache (and a kernel gains nothing from repeats)."""

    def __init__(self, fn: Callable, arg_pool: Sequence[tuple]):
        if not arg_pool:
            raise ValueError("Rotating needs at least one argument tuple")
        self.fn, self.pool, self.i = fn, list(arg_pool), 0

    def __call__(self):
        args = self.pool[self.i]
        self.i = (self.i + 1) % len(self.pool)
        return self.fn(*args)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str = "cpu", *, repeats: int = 10,
            min_run_time: float = CPU_MIN_RUN_TIME_S, rep_ms: float = GPU_REP_MS,
            threads: Optional[int] = None, warmup: int = 1,
            timer: Optional[Callable[[], float]] = None) -> Timing:
    """Median and spread of fn()'s per-call time, at least `repeats` samples.

    `warmup` untimed calls come first (first-call costs: allocation, cuDNN's algorithm search, Triton
    compilation). `timer` replaces the CPU clock (tests use a fake clock).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device == "cuda":
        return _measure_cuda(fn, repeats, rep_ms)
    return _measure_cpu(fn, repeats, min_run_time, threads, timer)


def _measure_cpu(fn, repeats, min_run_time, threads, timer) -> Timing:
    from torch.utils import benchmark

    kwargs = {"timer": timer} if timer is not None else {}
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                        num_threads=threads or torch.get_num_threads(), **kwargs)
    m = t.blocked_autorange(min_run_time=min_run_time)
    samples = list(m.times)
    # blocked_autorange stops after min_run_time; a slow kernel may have fewer blocks than asked.
    while len(samples) < repeats:
        samples.extend(t.timeit(number=m.number_per_run).times)
    return Timing.from_samples([s * 1e3 for s in samples])


def _measure_cuda(fn, repeats, rep_ms) -> Timing:
    from triton.testing import do_bench

    # do_bench picks its call count from `rep`; make that at least `repeats` calls.
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = (time.perf_counter() - start) * 1e3
    rep = max(rep_ms, math.ceil(repeats * est_ms * 1.2))
    try:
        samples = do_bench(fn, warmup=GPU_WARMUP_MS, rep=rep, return_mode="all")
    except (AssertionError, TypeError, ValueError):  # older Triton without return_mode="all"
        q = do_bench(fn, warmup=GPU_WARMUP_MS, rep=rep, quantiles=[0.5, 0.25, 0.75, 0.0, 1.0])
        return Timing(q[0], q[1], q[2], q[3], q[4], -1)
    return Timing.from_samples(samples)
