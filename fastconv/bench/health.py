"""Can this run's CPU times be trusted? Oversubscription checks for `fastconv bench`.

On a CPU shared with other processes, a library whose threads meet at barriers (oneDNN's
OpenMP threads) slows down by up to 100x once it runs more threads than the cores others
leave free, while at::parallel_for (fastconv's CPU kernels) degrades gently. A speedup
column measured like that measures the load, not the kernels. Three signals, each a pure
function of numbers (the tests inject them):

- load: the 1-minute load average (runnable threads of other processes) plus this run's
  threads against the logical CPUs;
- collapse: PyTorch's own conv at the run's thread count against the same conv on one
  thread (a calibration no other process's threads can make collapse): more threads must
  never be slower than one;
- spread: a measurement's slowest sample against its fastest.

The run's default thread count is chosen from the load (`default_threads`), a layer whose
measurements fail a check is measured again, and what still fails is flagged in every
output: the console, summary.md, the `warning`/`oversubscribed` columns and the plots.
"""
from __future__ import annotations

import math
import os
from typing import Optional

# Threads may exceed the idle CPUs by this much before we call the machine oversubscribed
# (the load average also counts this process's own, mostly idle, main thread).
LOAD_MARGIN = 0.5
# PyTorch's conv at T threads taking longer than this times its 1-thread time: collapsed.
COLLAPSE_RATIO = 1.5
# A measurement whose slowest sample is this many times its fastest: too noisy to rank.
SPREAD_RATIO = 3.0
# Measurements of a layer that failed a check are repeated this many times.
RETRIES = 1

BANNER = "TIMINGS NOT TRUSTWORTHY"


def loadavg() -> Optional[float]:
    """The 1-minute load average, None where the OS has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def default_threads(cpu_count: int, load_1m: Optional[float], torch_threads: int) -> int:
    """Threads for a run that gave no --threads: torch's default, but no more than the CPUs
    other processes leave idle (at least 1)."""
    if load_1m is None:
        return max(1, torch_threads)
    idle = cpu_count - load_1m
    return max(1, min(torch_threads, math.floor(idle + LOAD_MARGIN)))


def load_warning(load_1m: Optional[float], cpu_count: int, threads: int) -> Optional[str]:
    """A sentence when other processes' load plus `threads` exceeds the CPUs, else None."""
    if load_1m is None or threads <= 1:
        return None
    if load_1m + threads > cpu_count + LOAD_MARGIN:
        return (f"oversubscribed: load average {load_1m:.2f} plus {threads} threads on "
                f"{cpu_count} logical CPUs")
    return None


def collapse_warning(threads: int, ms: float, one_thread_ms: Optional[float],
                     what: str = "PyTorch") -> Optional[str]:
    """A sentence when `ms` at `threads` threads is slower than `one_thread_ms` by more
    than COLLAPSE_RATIO: threads waiting for CPUs other processes hold."""
    if threads <= 1 or one_thread_ms is None or not (ms == ms and one_thread_ms == one_thread_ms):
        return None
    if one_thread_ms > 0 and ms > COLLAPSE_RATIO * one_thread_ms:
        return (f"oversubscribed: {what} took {ms:.4g} ms on {threads} threads but "
                f"{one_thread_ms:.4g} ms on 1 thread ({ms / one_thread_ms:.3g}x slower)")
    return None


def spread_warning(min_ms: float, max_ms: float, what: str) -> Optional[str]:
    """A sentence when a measurement's samples span more than SPREAD_RATIO, else None."""
    if not (min_ms == min_ms and max_ms == max_ms) or min_ms <= 0:
        return None
    if max_ms > SPREAD_RATIO * min_ms:
        return f"noisy: {what} samples span {min_ms:.4g}-{max_ms:.4g} ms ({max_ms / min_ms:.3g}x)"
    return None


def row_warnings(row: dict, threads: int) -> list[str]:
    """Every check a benchmark row fails (row keys as in results.csv)."""
    out = [collapse_warning(threads, row.get("torch_ms", math.nan), row.get("torch_1t_ms"))]
    out.append(spread_warning(row.get("torch_min_ms", math.nan), row.get("torch_max_ms", math.nan),
                              "PyTorch"))
    if row.get("algo"):
        out.append(spread_warning(row.get("time_min_ms", math.nan), row.get("time_max_ms", math.nan),
                                  row["algo"]))
    return [w for w in out if w]


def is_oversubscribed(reasons) -> bool:
    return any(r.startswith("oversubscribed") for r in reasons)


def run_warnings(header: dict, rows) -> list[str]:
    """The run-level warnings every output repeats (empty when the run looks sound)."""
    out = list(header.get("warnings", []))
    if "warnings" not in header and header.get("device") == "cpu":  # a run from before the checks
        load = header.get("loadavg_at_start")
        w = load_warning(load[0] if load else None, header.get("cpu_count") or 1,
                         header.get("threads") or 1)
        if w:
            out.append(f"at start: {w} (this run predates the per-row checks)")
    flagged = [r for r in rows if r.get("warning")]
    if flagged:
        over = sum(1 for r in flagged if r.get("oversubscribed"))
        out.append(f"{len(flagged)} of {len(rows)} rows failed a timing check after "
                   f"re-measuring ({over} oversubscribed); see their `warning` column")
    st = header.get("stability") or {}
    if st and not st.get("within_spread", True):
        out.append(f"the first measurement ({st['layer']}) re-measured at the end fell outside "
                   "its spread: the machine's load changed during the run")
    return out


def advice(header: dict) -> str:
    return ("Re-run on an idle machine, or with --threads 1 (oneDNN's threads collapse when "
            "other processes hold the CPUs); compare rows only within one run.")
