"""The header of every benchmark output: what ran, on what, with which flags, and this machine's
measured ceilings (copy bandwidth and matmul rate) that the roofline plot is drawn against."""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import platform
import re
import socket
import subprocess
from typing import Optional

import torch

from .timing import measure

# Ceiling workloads: a copy larger than the last-level cache (twice it, within these bounds), and a
# square matmul large enough to reach the library's peak on this device.
COPY_BYTES_MIN = 64 << 20
COPY_BYTES_MAX = {"cpu": 512 << 20, "cuda": 2 << 30}
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}


def llc_bytes(device: str) -> int:
    """Last-level cache size: the L2 on a GPU, the L3 (else L2) of CPU 0."""
    if device == "cuda":
        return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
    for idx in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size") as f:
                txt = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1], 1)
            return int(txt.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return 32 << 20


def copy_bytes(device: str) -> int:
    return min(max(COPY_BYTES_MIN, 2 * llc_bytes(device)), COPY_BYTES_MAX[device])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _onednn_version() -> Optional[str]:
    m = re.search(r"(?:oneDNN|MKL-DNN)\s+v([\d.]+)", torch.__config__.show())
    return m.group(1) if m else None


def _git_commit() -> Optional[str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_capability() -> str:
    """ATen's vector ISA on this CPU (torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2,
    AVX512, ...), what its own kernels run; fastconv's CPU kernels use AVX2+FMA at most."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


def _fastconv_isa() -> Optional[str]:
    """The instruction set fastconv's CPU kernels use (fastconv.settings.cpu_isa)."""
    try:
        from .. import _C

        return _C.cpu_isa()
    except (ImportError, AttributeError):
        return None


def _cpu_flags() -> str:
    """The matrix and bf16 extensions oneDNN may use, which get_cpu_capability doesn't name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in ("avx512_bf16", "amx_tile", "amx_bf16") if x in have)
    except OSError:
        pass
    return ""


def tf32_flags() -> dict:
    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
    }


# glibc's malloc serves blocks above its mmap threshold (128 KiB, raised as big blocks are
# freed, at most to 32 MiB) with fresh pages from mmap and unmaps them on free: a call that
# allocates a large output pays a page fault per 4 KiB page on first touch, every call (a
# 25 MB output: ~15 ms at batch 8, more than the conv). jemalloc and tcmalloc, what
# PyTorch's CPU tuning guide recommends, keep freed pages; these two glibc settings do too.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_ALLOCATOR = "system default"


def keep_freed_pages() -> str:
    """Make glibc's malloc keep freed memory in the process (no mmap per large block, no
    trimming) for the rest of the process, so that repeated calls reuse resident pages.
    Returns the allocator's description for the run header (why not, where not glibc)."""
    global _ALLOCATOR
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        _ALLOCATOR = "system default (no glibc mallopt here)"
    elif mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1:
        _ALLOCATOR = ("glibc, freed pages kept (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1): "
                      "no page faults on repeated large allocations")
    else:
        _ALLOCATOR = "system default (mallopt refused)"
    return _ALLOCATOR


def describe(device: str, dtype: torch.dtype, threads: int) -> dict:
    """Versions, device and flags (no timing)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import fastconv

    h = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname().split(".")[0],
        "fastconv": fastconv.__version__,
        "fastconv_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "onednn": _onednn_version(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "cpu": _cpu_model(),
        "cpu_capability": _cpu_capability(),
        "fastconv_cpu_isa": _fastconv_isa(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "dtype": str(dtype).replace("torch.", ""),
        "tf32": tf32_flags(),
        # Other processes compete for the cores; keep this next to the numbers.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "allocator": _ALLOCATOR,
    }
    if device == "cuda":
        h["device_name"] = torch.cuda.get_device_name()
        h["cuda"] = torch.version.cuda
    else:
        h["device_name"] = h["cpu"]
    return h


def ceilings(device: str, dtype: torch.dtype, threads: int, repeats: int = 5,
             copy_nbytes: Optional[int] = None) -> dict:
    """This machine's measured copy bandwidth (bytes read + written per second, one tensor of
    `copy_nbytes`, default twice the last-level cache) and matmul rate (torch.mm in `dtype`)."""
    elem = torch.empty((), dtype=dtype).element_size()
    n_copy = (copy_nbytes or copy_bytes(device)) // elem
    src = torch.empty(n_copy, device=device, dtype=dtype).uniform_(-1, 1)
    dst = torch.empty_like(src)
    t_copy = measure(lambda: dst.copy_(src), device, repeats=repeats, threads=threads)
    copy_gbps = 2 * n_copy * elem / (t_copy.median_ms * 1e-3) / 1e9
    del src, dst

    n = MATMUL_SIZE[device]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t_mm = measure(lambda: torch.mm(a, b), device, repeats=repeats, threads=threads)
    mm_gflops = 2 * n ** 3 / (t_mm.median_ms * 1e-3) / 1e9
    return {
        "copy_bytes": 2 * n_copy * elem, "llc_bytes": llc_bytes(device), "copy_ms": t_copy.median_ms, "copy_gbps": copy_gbps,
        "copy_gbps_min": 2 * n_copy * elem / (t_copy.max_ms * 1e-3) / 1e9,
        "copy_gbps_max": 2 * n_copy * elem / (t_copy.min_ms * 1e-3) / 1e9,
        "matmul_n": n, "matmul_ms": t_mm.median_ms, "matmul_gflops": mm_gflops,
        "matmul_gflops_min": 2 * n ** 3 / (t_mm.max_ms * 1e-3) / 1e9,
        "matmul_gflops_max": 2 * n ** 3 / (t_mm.min_ms * 1e-3) / 1e9,
    }


def header_lines(h: dict) -> list[str]:
    """The header as short 'key: value' lines (terminal and summary.md)."""
    c = h.get("ceilings", {})
    tf = h["tf32"]
    lines = [
        f"device: {h['device']} — {h['device_name']}" + (
            f" (ATen CPU capability {h.get('cpu_capability', '?')}, fastconv kernels "
            f"{h.get('fastconv_cpu_isa', '?')}"
            + (f"; {h['cpu_flags']}" if h.get("cpu_flags") else "") + ")" if h["device"] == "cpu" else ""),
        f"threads: {h['threads']} (of {h['cpu_count']} logical CPUs; {h.get('threads_from', 'as given')}); "
        f"load average at start {h.get('loadavg_at_start')} (1/5/15 min)",
        f"torch {h['torch']}, triton {h['triton']}, oneDNN {h['onednn']} (mkldnn available: "
        f"{h['mkldnn_available']}), cuDNN {h['cudnn']}" + (f", CUDA {h.get('cuda')}" if h["device"] == "cuda" else ""),
        f"fastconv {h['fastconv']} (commit {h['fastconv_commit']}), python {h['python']}, host {h['host']}, {h['date_utc']} UTC",
        f"dtype {h['dtype']}, layout {h.get('layout')}, batch {h.get('batch')}, pass {h.get('pass')}",
        *([f"host allocator: {h['allocator']}"] if h["device"] == "cpu" and "allocator" in h else []),
        f"TF32: cuda.matmul.allow_tf32={tf['cuda.matmul.allow_tf32']} cudnn.allow_tf32={tf['cudnn.allow_tf32']} "
        f"float32_matmul_precision={tf['float32_matmul_precision']} cudnn.benchmark={tf['cudnn.benchmark']}",
    ]
    if c:
        lines.append(f"ceilings (measured): copy {c['copy_gbps']:.1f} GB/s (read+write {c['copy_bytes'] >> 20} MiB; "
                     f"last-level cache {c['llc_bytes'] >> 20} MiB), "
                     f"matmul {c['matmul_gflops']:.1f} GFLOP/s (torch.mm {c['matmul_n']}^3, {h['dtype']})")
    st = h.get("stability")
    if st:
        lines.append(f"stability: PyTorch on {st['layer']} re-measured at the end: {st['again_ms']:.4g} ms vs "
                     f"{st['first_ms']:.4g} ms (spread {st['first_min_ms']:.4g}–{st['first_max_ms']:.4g}): "
                     + ("within the spread" if st["within_spread"] else "OUTSIDE the spread (noisy machine)")
                     + (f"; but the first measurement itself failed a check ({st['first_warning']})"
                        if st.get("first_warning") else ""))
    return lines
