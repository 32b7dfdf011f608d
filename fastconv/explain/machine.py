"""This machine's memory hierarchy and roofline ceilings.

Cache geometry comes from /sys/devices/system/cpu/cpu0/cache/index*/ (data and
unified caches only); the ceilings are measured: a large copy for DRAM
bandwidth, a read loop over buffers that fit each cache level for the cache
bandwidths (fastconv._C.read_bandwidth_gbs), and a square matmul for the
compute rate.
"""
from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass

# Used when sysfs does not describe the caches (containers, non-Linux).
FALLBACK_LEVELS = (
    ("L1", 32 << 10, 8, 64),
    ("L2", 512 << 10, 8, 64),
    ("L3", 32 << 20, 16, 64),
)
# A GPU's hierarchy as the GPU model sees it (H100 SXM: 50 MB L2).
GPU_L2_BYTES = 50 << 20

SYSFS = "/sys/devices/system/cpu/cpu0/cache"


@dataclass(frozen=True)
class CacheLevel:
    name: str
    size: int
    ways: int
    line: int

    @property
    def sets(self) -> int:
        return self.size // (self.ways * self.line)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.size, self.ways, self.line)


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def cache_levels(sysfs: str = SYSFS) -> list[CacheLevel]:
    """Data/unified cache levels of cpu0, L1 first; the fallback if unreadable."""
    found = {}
    for d in sorted(glob.glob(os.path.join(sysfs, "index*"))):
        try:
            kind = open(os.path.join(d, "type")).read().strip()
            if kind not in ("Data", "Unified"):
                continue
            level = int(open(os.path.join(d, "level")).read())
            size = _parse_size(open(os.path.join(d, "size")).read())
            ways = int(open(os.path.join(d, "ways_of_associativity")).read())
            line = int(open(os.path.join(d, "coherency_line_size")).read())
        except (OSError, ValueError):
            continue
        if size <= 0 or ways <= 0 or line <= 0 or size % (ways * line):
            continue
        found[level] = CacheLevel(f"L{level}", size, ways, line)
    if not found or 1 not in found or len({lv.line for lv in found.values()}) != 1:
        return [CacheLevel(*x) for x in FALLBACK_LEVELS]
    return [found[k] for k in sorted(found)]


def memory_levels(device: str = "cpu") -> list[str]:
    """Names of the levels bytes are reported for: each cache, then DRAM/HBM."""
    if device == "cuda":
        return ["L2", "HBM"]
    return [lv.name for lv in cache_levels()] + ["DRAM"]


@dataclass
class Ceilings:
    peak_gflops: float                 # measured fp32 matmul rate
    bandwidth_gbs: dict[str, float]    # level -> measured read bandwidth
    threads: int
    how: str

    def to_dict(self):
        return asdict(self)


def _time_best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_ceilings(quick: bool = False) -> Ceilings:
    """Measure the compute and bandwidth ceilings of this CPU (seconds to run)."""
    import torch

    from .. import _C

    n = 512 if quick else 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = _time_best(lambda: torch.mm(a, b), 3 if quick else 7)
    peak = 2 * n ** 3 / t / 1e9
    bw = {}
    levels = cache_levels()
    for lv in levels:
        size = max(4096, lv.size // 2)
        if size > (32 << 20):  # a VM can report the host's whole L3 (480 MiB here); cap the buffer
            size = 32 << 20
        reps = max(1, int((64 << 20 if not quick else 8 << 20) // size))
        bw[lv.name] = _C.read_bandwidth_gbs(size, reps)
        if lv.name in ("L1", "L2"):  # private per core: the kernels' threads each have one
            bw[lv.name] *= min(torch.get_num_threads(), os.cpu_count() or 1)
    # DRAM: a copy much larger than the caches (the benchmark suite's measurement
    # when fastconv.bench provides it, so both tools draw the same roofline).
    bench = None
    if not quick:
        try:
            from ..bench import machine as bench
        except ImportError:
            bench = None
    if bench is not None and hasattr(bench, "ceilings"):
        c = bench.ceilings("cpu", torch.float32, torch.get_num_threads(), copy_nbytes=512 << 20)
        bw["DRAM"], peak = c["copy_gbps"], c["matmul_gflops"]
        how = f"fastconv.bench.machine.ceilings (512 MiB copy, {c['matmul_n']}^3 matmul); read loop per cache level"
    else:
        big = (64 << 20) if quick else (512 << 20)
        src = torch.empty(big // 4)
        src.fill_(1.0)
        dst = torch.empty_like(src)
        dst.copy_(src)
        t = _time_best(lambda: dst.copy_(src), 3 if quick else 5)
        bw["DRAM"] = 2 * big / t / 1e9  # read + write
        how = (f"matmul {n}^3 fp32 ({torch.get_num_threads()} threads); read loop over half of each "
               f"cache; {big >> 20} MiB copy for DRAM")
    return Ceilings(peak, bw, torch.get_num_threads(), how)


_CACHE_FILE = os.path.join(os.path.expanduser("~"), ".cache", "fastconv", "ceilings.json")


def ceilings(quick: bool = False, refresh: bool = False) -> Ceilings:
    """Measured ceilings, cached per (machine, thread count) in ~/.cache/fastconv."""
    import torch

    key = f"{os.uname().nodename}:{torch.get_num_threads()}:{'quick' if quick else 'full'}"
    store = {}
    try:
        store = json.load(open(_CACHE_FILE))
    except (OSError, ValueError):
        store = {}
    if not refresh and key in store:
        return Ceilings(**store[key])
    c = measure_ceilings(quick)
    store[key] = c.to_dict()
    try:
        os.makedirs(os.path.dirname(_CACHE_FILE), exist_ok=True)
        json.dump(store, open(_CACHE_FILE, "w"), indent=1)
    except OSError:
        pass
    return c
