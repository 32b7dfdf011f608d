"""Python side of the trace-driven cache simulator (csrc/cachesim.cpp)."""
from __future__ import annotations

from ..spec import ConvSpec
from .machine import CacheLevel, cache_levels
from .model import blocking, current_isa

# Counted accesses per simulation before sampling kicks in (about 1-3 s).
DEFAULT_SAMPLE_ACCESSES = 20_000_000
SIMULATED_ALGOS = ("reference", "im2col", "direct", "depthwise")


def geometry(spec: ConvSpec) -> dict:
    return {"N": spec.N, "C": spec.C, "H": spec.H, "W": spec.W, "K": spec.K, "R": spec.R, "S": spec.S,
            "stride": list(spec.stride), "padding": list(spec.padding), "dilation": list(spec.dilation),
            "groups": spec.groups, "elem": spec.element_size, "layout": spec.layout}


def per_level(raw: dict, levels: list[CacheLevel]) -> dict:
    """{level: {accesses, hits, misses, bytes}}; bytes = what the level delivers upward."""
    out = {}
    for i, lv in enumerate(levels):
        st = raw["levels"][i]
        delivered = raw["l1_bytes"] if i == 0 else raw["levels"][i - 1]["misses"] * lv.line
        out[lv.name] = {"accesses": st["accesses"], "hits": st["hits"], "misses": st["misses"],
                        "writebacks": st["writebacks"], "bytes": delivered}
    last = raw["levels"][-1]["misses"]
    out["DRAM"] = {"accesses": last, "hits": last, "misses": 0, "writebacks": 0,
                   "bytes": last * levels[-1].line}
    return out


def simulate(algo: str, spec: ConvSpec, levels: list[CacheLevel] | None = None,
             sample_accesses: int = DEFAULT_SAMPLE_ACCESSES, reuse_histogram: bool = True,
             blocking_constants: dict | None = None, isa: str | None = None, valgrind_view: bool = False) -> dict:
    """Replay `algo`'s loop nest on `spec` through the cache hierarchy `levels`
    (blocking constants: fastconv._C.blocking() unless given), as the kernels run it
    on instruction set `isa` ("portable", "avx2", "avx512"; default: the one they use
    now, fastconv._C.cpu_isa()). valgrind_view=True drops the AVX masked stores
    (vmaskmovps), which valgrind's cache simulation does not see (for comparisons with it)."""
    from .. import _C

    if algo not in SIMULATED_ALGOS:
        raise ValueError(f"the cache simulator replays {', '.join(SIMULATED_ALGOS)}; not {algo!r}")
    levels = levels or cache_levels()
    b = blocking_constants if blocking_constants is not None else blocking()
    raw = _C.cachesim_simulate(algo, geometry(spec), {k: int(v) for k, v in b.items()},
                               [lv.as_tuple() for lv in levels], int(sample_accesses), bool(reuse_histogram),
                               current_isa(isa), bool(valgrind_view))
    return {"levels": per_level(raw, levels), "operands": raw["operands"], "reuse_hist": raw["reuse_hist"],
            "reuse_cold": raw["reuse_cold"], "units_total": raw["units_total"],
            "units_counted": raw["units_counted"], "scale": raw["scale"], "accesses": raw["accesses"]}


def record(algo: str, spec: ConvSpec, unit: int = 0, max_records: int = 200_000, isa: str | None = None) -> list:
    """(operand, byte offset, bytes, is_write) of the accesses of one work unit."""
    from .. import _C

    b = blocking()
    return _C.cachesim_record(algo, geometry(spec), {k: int(v) for k, v in b.items()}, unit, unit + 1,
                              max_records, current_isa(isa))
