"""Assemble `fastconv explain`'s answer for one conv: FLOPs, bytes per memory
level (modelled, simulated), intensity, the roofline bound and measured time."""
from __future__ import annotations

from typing import Optional

import torch

from .. import registry
from ..spec import ConvSpec
from . import machine, model as cmodel
from .simulate import SIMULATED_ALGOS, simulate


def make_inputs(spec: ConvSpec, device: Optional[str] = None):
    device = device or spec.device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.input_shape, generator=g, dtype=spec.dtype).to(device)
    w = torch.randn(spec.weight_shape, generator=g, dtype=spec.dtype).to(device)
    if spec.layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    return x, w


def time_ms(fn, min_run_time: float = 0.3) -> float:
    """Median time of fn() in milliseconds (torch.utils.benchmark)."""
    from torch.utils import benchmark

    fn()
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e3


def run_algo(algo: registry.Algorithm, spec: ConvSpec, x, w):
    return lambda: algo.forward(x, w, None, list(spec.stride), list(spec.padding), list(spec.dilation),
                                spec.groups)


def workspace_bytes(name: str, spec: ConvSpec) -> int:
    if name != "im2col":
        return 0
    from .. import _C

    return int(_C.im2col_workspace_bytes(list(spec.input_shape), list(spec.weight_shape), list(spec.stride),
                                         list(spec.padding), list(spec.dilation), spec.groups,
                                         spec.element_size))


def modeled(name: str, spec: ConvSpec, levels) -> tuple[dict, list, list]:
    """(bytes per level, top terms, notes) for a CPU algorithm; GPU: the L2/HBM model."""
    if spec.device == "cuda":
        b = cmodel.gpu_cost_model(spec, machine.GPU_L2_BYTES)
        note = (f"GPU model, default tile: HBM {b['HBM_read'] / 1e6:.1f} MB read + "
                f"{b['HBM_write'] / 1e6:.1f} MB written (the write leaves L2 when evicted, "
                "partly after the kernel ends)")
        return {"L2": b["L2"], "HBM": b["HBM"]}, [], [note]
    algo = registry.get(name)
    if algo.cost_model is not None and name not in cmodel.CPU_MODELS:
        return algo.cost_model(spec), [], []
    m = cmodel.model(name, spec)
    caps = cmodel.level_configs(levels)
    terms = sorted(m.terms, key=lambda t: -t.bytes)
    top = [{"operand": t.operand, "what": t.what, "bytes": t.bytes,
            "reuse_distance": None if t.distance == float("inf") else t.distance} for t in terms]
    return m.bytes_per_level(caps), top, m.notes


def roofline(flops: float, level_bytes: dict, ceil: machine.Ceilings) -> tuple[float, str]:
    """(bound in ms, what binds): max of compute time and each level's bytes / bandwidth."""
    best, what = flops / (ceil.peak_gflops * 1e9), "compute"
    for lv, nbytes in level_bytes.items():
        bw = ceil.bandwidth_gbs.get(lv)
        if bw and nbytes / (bw * 1e9) > best:
            best, what = nbytes / (bw * 1e9), lv
    return best * 1e3, what


def explain(spec: ConvSpec, algos: Optional[list[str]] = None, simulate_caches: bool = False,
            measure: bool = False, ceilings: Optional[machine.Ceilings] = None,
            sample_accesses: Optional[int] = None, min_run_time: float = 0.3) -> dict:
    """Everything `fastconv explain` prints, as a JSON-able dict."""
    if algos:
        chosen = [registry.get(a) for a in algos]
        for a in chosen:
            why = a.why_not(spec)
            if why:
                raise ValueError(why)
    else:
        chosen = registry.applicable(spec)
    levels = machine.cache_levels() if spec.device == "cpu" else []
    ceil = ceilings
    if ceil is None and spec.device == "cpu":
        ceil = machine.ceilings()
    out = {
        "spec": spec.describe(),
        "layout": spec.layout,
        "device": spec.device,
        "dtype": str(spec.dtype).replace("torch.", ""),
        "flops": spec.flops,
        "min_bytes": spec.min_bytes,
        "gemm_shape": list(spec.gemm_shape),
        "caches": [{"name": lv.name, "size": lv.size, "ways": lv.ways, "line": lv.line} for lv in levels],
        "ceilings": ceil.to_dict() if ceil else None,
        "algorithms": [],
    }
    out["blocking"] = cmodel.blocking()
    if spec.device == "cpu":
        out["cpu_isa"] = cmodel.current_isa()  # the ISA whose loop nests model and simulator follow
    x = w = None
    if measure:
        x, w = make_inputs(spec)
    for a in chosen:
        lb, terms, notes = modeled(a.name, spec, levels)
        entry = {
            "algo": a.name,
            "flops": spec.flops,
            "min_bytes": spec.min_bytes,
            "workspace_bytes": workspace_bytes(a.name, spec),
            "modeled_bytes": lb,
            "intensity": {lv: (spec.flops / v if v else None) for lv, v in lb.items()},
            "terms": terms[:12],
            "notes": notes,
            "simulated": None,
            "measured_ms": None,
        }
        if ceil is not None:
            entry["bound_ms"], entry["bound_by"] = roofline(spec.flops, lb, ceil)
        if simulate_caches and spec.device == "cpu" and a.name in SIMULATED_ALGOS:
            kw = {} if sample_accesses is None else {"sample_accesses": sample_accesses}
            sim = simulate(a.name, spec, levels, **kw)
            entry["simulated"] = sim["levels"]
            entry["reuse_hist"] = sim["reuse_hist"]
            entry["reuse_cold"] = sim["reuse_cold"]
            entry["sim_sampled_fraction"] = sim["units_counted"] / max(1, sim["units_total"])
            entry["sim_operands"] = sim["operands"]
        if measure:
            entry["measured_ms"] = time_ms(run_algo(a, spec, x, w), min_run_time)
            if entry.get("bound_ms"):
                entry["fraction_of_bound"] = entry["bound_ms"] / entry["measured_ms"]
        out["algorithms"].append(entry)
    return out


def _fmt_bytes(v) -> str:
    if v is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.0f} B"


def format_text(r: dict) -> str:
    lines = [f"{r['spec']}  layout={r['layout']} device={r['device']} dtype={r['dtype']}",
             f"FLOPs {r['flops'] / 1e6:.1f} M   minimal bytes {_fmt_bytes(r['min_bytes'])}   "
             f"intensity {r['flops'] / r['min_bytes']:.1f} FLOP/B   equivalent GEMM (M,N,K) = {tuple(r['gemm_shape'])}"]
    if r["caches"]:
        lines.append("caches: " + ", ".join(f"{c['name']} {_fmt_bytes(c['size'])} {c['ways']}-way" for c in r["caches"])
                     + (f"; loop nests of the {r['cpu_isa']} kernels" if r.get("cpu_isa") else ""))
    if r["ceilings"]:
        c = r["ceilings"]
        lines.append(f"ceilings: {c['peak_gflops']:.0f} GFLOP/s; " +
                     ", ".join(f"{k} {v:.0f} GB/s" for k, v in c["bandwidth_gbs"].items()))
    for a in r["algorithms"]:
        lines.append("")
        lines.append(f"== {a['algo']}   workspace {_fmt_bytes(a['workspace_bytes'])}")
        for n in a["notes"]:
            lines.append(f"   {n}")
        hdr = f"   {'level':6s} {'modelled':>11s} {'FLOP/B':>8s}"
        if a["simulated"]:
            hdr += f" {'simulated':>11s} {'hit rate':>9s}"
        lines.append(hdr)
        for lv, v in a["modeled_bytes"].items():
            row = f"   {lv:6s} {_fmt_bytes(v):>11s} {a['intensity'][lv] or 0:8.2f}"
            if a["simulated"] and lv in a["simulated"]:
                s = a["simulated"][lv]
                rate = s["hits"] / s["accesses"] if s["accesses"] and lv != "DRAM" else None
                row += f" {_fmt_bytes(s['bytes']):>11s} {'' if rate is None else f'{rate:9.1%}'}"
            lines.append(row)
        if "bound_ms" in a:
            t = f"   roofline bound {a['bound_ms']:.3f} ms ({a['bound_by']}-bound)"
            if a["measured_ms"] is not None:
                t += f"; measured {a['measured_ms']:.3f} ms = {a['fraction_of_bound']:.0%} of the bound"
            lines.append(t)
        elif a["measured_ms"] is not None:
            lines.append(f"   measured {a['measured_ms']:.3f} ms")
        for t in a["terms"][:5]:
            d = "compulsory" if t["reuse_distance"] is None else f"reuse distance {_fmt_bytes(t['reuse_distance'])}"
            lines.append(f"   - {t['operand']:13s} {_fmt_bytes(t['bytes']):>10s}  {t['what']} ({d})")
    return "\n".join(lines)
