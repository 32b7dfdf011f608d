"""Writing results: results.csv, results.json, summary.md and the terminal table."""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from typing import Optional

from . import machine, tables

# results.csv columns, in order. Timings in ms: median (`<x>_ms`) with quartiles, min/max and the
# number of samples; `<x>` is time (the fastconv algorithm), torch, gemm, unfold, linear.
_SPREAD = ("q25_ms", "q75_ms", "min_ms", "max_ms", "n")
CSV_COLUMNS = (
    ["suite", "layer", "count", "pass", "N", "C", "H", "W", "K", "R", "S", "stride", "padding",
     "dilation", "groups", "Ho", "Wo", "device", "dtype", "layout", "algo",
     "time_ms", "torch_ms", "torch_backend", "gemm_ms", "gemm_op", "unfold_ms", "linear_ms",
     "speedup", "vs_gemm", "gflops", "gbps", "torch_gflops", "gemm_gflops", "unfold_gflops",
     "linear_gflops", "flops", "min_bytes", "intensity", "max_rel_err", "ok"]
    + [f"{p}_{s}" for p in ("time", "torch", "gemm", "unfold", "linear") for s in _SPREAD]
)


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def write_csv(rows, path: str, header: Optional[dict] = None) -> None:
    """One row per (layer, pass, algo), preceded by the run's header as `# ` lines
    (pandas: read_csv(path, comment="#"); or `read_csv` below)."""
    with open(path, "w", newline="") as f:
        if header is not None:
            for line in machine.header_lines(header):
                f.write(f"# {line}\n")
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if _clean(r.get(k)) is None else _fmt_csv(r.get(k))) for k in CSV_COLUMNS})


def read_csv(path: str) -> list[dict]:
    """results.csv's rows (strings), its `# ` header lines skipped."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _fmt_csv(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_json(result, path: str) -> None:
    doc = {
        "header": result.header,
        "sources": {s: tables.source(s) for s in sorted({r["suite"] for r in result.rows})},
        "rows": [{k: _clean(v) for k, v in r.items()} for r in result.rows],
        "skipped": [dict(zip(("suite", "layer", "algo", "reason"), s)) for s in result.skipped],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)


def load_json(path: str):
    """results.json back as a Result (None -> NaN in numeric fields), for --replot."""
    from .runner import Result

    with open(path) as f:
        doc = json.load(f)
    rows = [{k: (math.nan if v is None and k not in ("algo", "torch_backend", "gemm_op") else v)
             for k, v in r.items()} for r in doc["rows"]]
    skipped = [(s["suite"], s["layer"], s["algo"], s["reason"]) for s in doc.get("skipped", [])]
    return Result(header=doc["header"], rows=rows, skipped=skipped)


def geomean(values) -> float:
    vals = [v for v in values if v is not None and v == v and v > 0]
    if not vals:
        return math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def summary_table(rows) -> list[dict]:
    """Per (suite, pass, algo): geomean speedup vs PyTorch and vs the GEMM, and whole-network time
    (sum of count x time over the suite's layers) for fastconv and PyTorch."""
    groups = defaultdict(list)
    for r in rows:
        if r["algo"]:
            groups[(r["suite"], r["pass"], r["algo"])].append(r)
    out = []
    for (suite, pss, algo), rs in groups.items():
        def total(key):
            vals = [r["count"] * r[key] for r in rs if r[key] == r[key]]
            return sum(vals) if len(vals) == len(rs) else math.nan

        out.append({
            "suite": suite, "pass": pss, "algo": algo, "layers": len(rs),
            "geomean_speedup": geomean(r["speedup"] for r in rs),
            "min_speedup": min(r["speedup"] for r in rs), "max_speedup": max(r["speedup"] for r in rs),
            "geomean_vs_gemm": geomean(r["vs_gemm"] for r in rs),
            "network_ms": total("time_ms"), "network_torch_ms": total("torch_ms"),
            "all_ok": all(r["ok"] for r in rs),
        })
    return out


def _f(v, spec=".3g"):
    return "—" if v is None or v != v else format(v, spec)


def write_summary(result, path: str, plots=()) -> None:
    h = result.header
    lines = ["# fastconv bench", ""]
    lines += [f"- {ln}" for ln in machine.header_lines(h)]
    lines += [f"- timing: {h['timing']}; inputs: {h['inputs']}",
              "- speedup = PyTorch F.conv2d time / fastconv time (> 1: fastconv faster); "
              "vs GEMM = equivalent torch.mm/bmm time / fastconv time; network = sum over the "
              "suite's distinct layers of count x median time.", ""]
    lines += ["## Geometric-mean speedup per suite and algorithm", "",
              "| suite | pass | algo | layers | geomean speedup vs PyTorch | min | max | geomean vs GEMM "
              "| network ms (fastconv) | network ms (PyTorch) | outputs ok |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summary_table(result.rows):
        lines.append(f"| {s['suite']} | {s['pass']} | {s['algo']} | {s['layers']} | "
                     f"{_f(s['geomean_speedup'])} | {_f(s['min_speedup'])} | {_f(s['max_speedup'])} | "
                     f"{_f(s['geomean_vs_gemm'])} | {_f(s['network_ms'], '.4g')} | "
                     f"{_f(s['network_torch_ms'], '.4g')} | {'yes' if s['all_ok'] else 'NO'} |")
    lines += ["", "## Every layer", "",
              "| suite | layer | N | geometry | pass | algo | fastconv ms (IQR) | PyTorch ms | backend "
              "| GEMM ms | unfold ms | Linear ms | speedup | GFLOP/s | GB/s |",
              "|---|---|---:|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in result.rows:
        geo = (f"{r['C']}x{r['H']}x{r['W']} -> {r['K']} {r['R']}x{r['S']} s{r['stride']} p{r['padding']}"
               + (f" g{r['groups']}" if r["groups"] > 1 else ""))
        lines.append(
            f"| {r['suite']} | {r['layer']} | {r['N']} | {geo} | {r['pass']} | {r['algo'] or '—'} | "
            f"{_f(r['time_ms'], '.4g')} ({_f(r['time_q25_ms'], '.4g')}–{_f(r['time_q75_ms'], '.4g')}) | "
            f"{_f(r['torch_ms'], '.4g')} | {r['torch_backend']} | {_f(r['gemm_ms'], '.4g')} | "
            f"{_f(r['unfold_ms'], '.4g')} | {_f(r['linear_ms'], '.4g')} | {_f(r['speedup'])} | "
            f"{_f(r['gflops'], '.4g')} | {_f(r['gbps'], '.4g')} |")
    if result.skipped:
        lines += ["", "## Not timed", ""]
        lines += [f"- {s[0]}/{s[1]} {s[2]}: {s[3]}" for s in result.skipped]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots]
    lines += ["", "## Layer tables", ""]
    for s in sorted({r["suite"] for r in result.rows}):
        lines.append(f"- **{s}**: {tables.source(s)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# Terminal table: one line per row as it completes.
_TERM = "{suite:<14} {layer:<32} {N:>4} {pass_:<7} {algo:<10} {time:>11} {torch:>11} {backend:<18} {gemm:>10} {unfold:>10} {speedup:>8} {gflops:>8}"


def terminal_header() -> str:
    return _TERM.format(suite="suite", layer="layer", N="N", pass_="pass", algo="algo", time="fastconv ms",
                        torch="torch ms", backend="torch backend", gemm="gemm ms", unfold="unfold ms",
                        speedup="speedup", gflops="GFLOP/s")


def terminal_line(r: dict) -> str:
    return _TERM.format(suite=r["suite"], layer=r["layer"][:32], N=r["N"], pass_=r["pass"],
                        algo=(r["algo"] or "—") + ("" if r["ok"] else "!"),
                        time=_f(r["time_ms"], ".4g"), torch=_f(r["torch_ms"], ".4g"),
                        backend=r["torch_backend"][:18], gemm=_f(r["gemm_ms"], ".4g"),
                        unfold=_f(r["unfold_ms"], ".4g"), speedup=_f(r["speedup"], ".3g"),
                        gflops=_f(r["gflops"], ".4g"))


def terminal_summary(rows) -> str:
    lines = ["", f"{'suite':<14} {'pass':<7} {'algo':<10} {'layers':>6} {'geomean speedup':>16} "
                 f"{'vs GEMM':>8} {'network ms':>11} {'torch net ms':>12}"]
    for s in summary_table(rows):
        lines.append(f"{s['suite']:<14} {s['pass']:<7} {s['algo']:<10} {s['layers']:>6} "
                     f"{_f(s['geomean_speedup']):>16} {_f(s['geomean_vs_gemm']):>8} "
                     f"{_f(s['network_ms'], '.4g'):>11} {_f(s['network_torch_ms'], '.4g'):>12}"
                     + ("" if s["all_ok"] else "  (WRONG OUTPUTS)"))
    return "\n".join(lines)
