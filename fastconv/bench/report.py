"""Writing results: results.csv, results.json, summary.md and the terminal table."""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from typing import Optional

from . import health, machine, tables

# results.csv columns, in order. Timings in ms: median (`<x>_ms`) with quartiles, min/max and the
# number of samples; `<x>` is time (the fastconv algorithm), torch, gemm, unfold, linear.
# `torch_1t_ms`: PyTorch's conv on one thread (the oversubscription calibration, CPU only);
# `warning`: the timing checks the row still failed after re-measuring (empty: none);
# `oversubscribed`: one of them was threads collapsing (fastconv/bench/health.py).
_SPREAD = ("q25_ms", "q75_ms", "min_ms", "max_ms", "n")
ROW_COLUMNS = (
    ["suite", "layer", "count", "pass", "N", "C", "H", "W", "K", "R", "S", "stride", "padding",
     "dilation", "groups", "Ho", "Wo", "device", "dtype", "layout", "algo",
     "time_ms", "torch_ms", "torch_backend", "gemm_ms", "gemm_op", "unfold_ms", "linear_ms",
     "speedup", "vs_gemm", "gflops", "gbps", "torch_gflops", "gemm_gflops", "unfold_gflops",
     "linear_gflops", "flops", "min_bytes", "intensity", "max_rel_err", "ok",
     "warning", "oversubscribed", "torch_1t_ms", "measured"]
    + [f"{p}_{s}" for p in ("time", "torch", "gemm", "unfold", "linear") for s in _SPREAD]
)
# The run's metadata, repeated on every row (as timm's and Liger's result files do), so one
# results file is self-describing and files of several runs concatenate.
RUN_COLUMNS = ("date_utc", "host", "device_name", "cpu_capability", "fastconv_cpu_isa", "cpu_count",
               "threads",
               "loadavg_1m", "torch_version", "triton_version", "onednn_version", "cudnn_version",
               "cuda_version", "python_version", "fastconv_version", "fastconv_commit")
CSV_COLUMNS = ROW_COLUMNS + list(RUN_COLUMNS)


def run_columns(header: Optional[dict]) -> dict:
    """The run's metadata as RUN_COLUMNS values."""
    h = header or {}
    load = h.get("loadavg_at_start")
    return {
        "date_utc": h.get("date_utc"), "host": h.get("host"), "device_name": h.get("device_name"),
        "cpu_capability": h.get("cpu_capability"), "fastconv_cpu_isa": h.get("fastconv_cpu_isa"),
        "cpu_count": h.get("cpu_count"),
        "threads": h.get("threads"), "loadavg_1m": load[0] if load else None,
        "torch_version": h.get("torch"), "triton_version": h.get("triton"),
        "onednn_version": h.get("onednn"), "cudnn_version": h.get("cudnn"),
        "cuda_version": h.get("cuda"), "python_version": h.get("python"),
        "fastconv_version": h.get("fastconv"), "fastconv_commit": h.get("fastconv_commit"),
    }


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def records(rows, header: Optional[dict] = None) -> list[dict]:
    """Every row with every CSV column (missing ones None, NaN as None) and the run's metadata."""
    meta = run_columns(header)
    return [{k: _clean(r.get(k, meta.get(k))) for k in CSV_COLUMNS} for r in rows]


def write_csv(rows, path: str, header: Optional[dict] = None) -> None:
    """A header line and one row per (layer, pass, algo), the run's metadata as columns
    (pandas.read_csv and csv.DictReader read it as is)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in records(rows, header):
            w.writerow({k: ("" if v is None else _fmt_csv(v)) for k, v in r.items()})


def read_csv(path: str) -> list[dict]:
    """results.csv's rows (strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt_csv(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_json(result, path: str, run_path: Optional[str] = None) -> None:
    """results.json: the rows as a list of records, the same columns as results.csv
    (pandas.read_json reads it as is). run.json (`run_path`, default beside it): the full
    header (flags, ceilings, stability, warnings), the layer tables' sources and what was
    not timed, which --replot reads back."""
    with open(path, "w") as f:
        json.dump(records(result.rows, result.header), f, indent=1, default=str)
    doc = {
        "header": result.header,
        "sources": {s: tables.source(s) for s in sorted({r["suite"] for r in result.rows})},
        "skipped": [dict(zip(("suite", "layer", "algo", "reason"), s)) for s in result.skipped],
    }
    with open(run_path or os.path.join(os.path.dirname(path), "run.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)


_TEXT_COLUMNS = {"algo", "torch_backend", "gemm_op", "warning", *RUN_COLUMNS}


def load_json(path: str):
    """results.json (and run.json beside it) back as a Result (None -> NaN in numeric
    fields), for --replot."""
    from .runner import Result

    with open(path) as f:
        doc = json.load(f)
    if isinstance(doc, dict):  # results.json before the run metadata moved to run.json
        run, raw = doc, doc["rows"]
    else:
        with open(os.path.join(os.path.dirname(path), "run.json")) as f:
            run, raw = json.load(f), doc
    rows = [{k: (math.nan if v is None and k not in _TEXT_COLUMNS else v) for k, v in r.items()}
            for r in raw]
    for r in rows:
        r["warning"] = r.get("warning") or ""
    skipped = [(s["suite"], s["layer"], s["algo"], s["reason"]) for s in run.get("skipped", [])]
    return Result(header=run["header"], rows=rows, skipped=skipped)


def geomean(values) -> float:
    vals = [v for v in values if v is not None and v == v and v > 0]
    if not vals:
        return math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _table_layers(suite: str) -> Optional[int]:
    try:
        return len({r["name"] for r in tables.rows(suite)})
    except ValueError:
        return None


def summary_table(rows) -> list[dict]:
    """Per (suite, pass, algo): geomean speedup vs PyTorch and vs the GEMM, and the sum of
    count x median time over the timed layers, for fastconv and PyTorch. That sum is the
    whole network's conv time (`network_ms`) only when every layer of the suite's table was
    timed (`complete`); --quick times a subset, whose sum is `timed_ms` alone."""
    groups = defaultdict(list)
    for r in rows:
        if r["algo"]:
            groups[(r["suite"], r["pass"], r["algo"])].append(r)
    out = []
    for (suite, pss, algo), rs in groups.items():
        def total(key):
            vals = [r["count"] * r[key] for r in rs if r[key] == r[key]]
            return sum(vals) if len(vals) == len(rs) else math.nan

        n_table = _table_layers(suite)
        complete = n_table is not None and len({r["layer"] for r in rs}) == n_table
        timed, timed_torch = total("time_ms"), total("torch_ms")
        out.append({
            "suite": suite, "pass": pss, "algo": algo, "layers": len(rs), "table_layers": n_table,
            "complete": complete,
            "geomean_speedup": geomean(r["speedup"] for r in rs),
            "min_speedup": min(r["speedup"] for r in rs), "max_speedup": max(r["speedup"] for r in rs),
            "geomean_vs_gemm": geomean(r["vs_gemm"] for r in rs),
            "timed_ms": timed, "timed_torch_ms": timed_torch,
            "network_ms": timed if complete else math.nan,
            "network_torch_ms": timed_torch if complete else math.nan,
            "all_ok": all(r["ok"] for r in rs),
            "flagged": sum(1 for r in rs if r.get("warning")),
        })
    return out


def _layers_cell(s) -> str:
    n = s["table_layers"]
    return f"{s['layers']}" if s["complete"] or n is None else f"{s['layers']} of {n}"


def warning_lines(result) -> list[str]:
    """The run's warnings (empty when it looks sound), with what to do."""
    ws = health.run_warnings(result.header, result.rows)
    if not ws:
        return []
    return [f"{health.BANNER}: " + ws[0], *ws[1:], health.advice(result.header)]


def _f(v, spec=".3g"):
    return "—" if v is None or v != v else format(v, spec)


def write_summary(result, path: str, plots=()) -> None:
    h = result.header
    lines = ["# fastconv bench", ""]
    warn = warning_lines(result)
    if warn:
        lines += [f"> **WARNING — {warn[0]}**", ">"] + [f"> - {w}" for w in warn[1:]] + [""]
    lines += [f"- {ln}" for ln in machine.header_lines(h)]
    lines += [f"- timing: {h['timing']}; inputs: {h['inputs']}",
              "- speedup = PyTorch F.conv2d time / fastconv time (> 1: fastconv faster); "
              "vs GEMM = equivalent torch.mm/bmm time / fastconv time; Σ count×ms = sum over the "
              "timed layers of (occurrences in the network) x median time: the network's conv "
              "time when every layer of the table was timed (layers = all), else a subset's "
              "(layers = k of n, e.g. --quick).", ""]
    lines += ["## Geometric-mean speedup per suite and algorithm", "",
              "| suite | pass | algo | layers | geomean speedup vs PyTorch | min | max | geomean vs GEMM "
              "| Σ count×ms (fastconv) | Σ count×ms (PyTorch) | outputs ok | rows flagged |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for s in summary_table(result.rows):
        lines.append(f"| {s['suite']} | {s['pass']} | {s['algo']} | {_layers_cell(s)} | "
                     f"{_f(s['geomean_speedup'])} | {_f(s['min_speedup'])} | {_f(s['max_speedup'])} | "
                     f"{_f(s['geomean_vs_gemm'])} | {_f(s['timed_ms'], '.4g')} | "
                     f"{_f(s['timed_torch_ms'], '.4g')} | {'yes' if s['all_ok'] else 'NO'} | "
                     f"{s['flagged'] or ''} |")
    lines += ["", "## Every layer", "",
              "| suite | layer | N | geometry | pass | algo | fastconv ms (IQR) | PyTorch ms | backend "
              "| GEMM ms | unfold ms | Linear ms | speedup | GFLOP/s | GB/s | warning |",
              "|---|---|---:|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result.rows:
        geo = (f"{r['C']}x{r['H']}x{r['W']} -> {r['K']} {r['R']}x{r['S']} s{r['stride']} p{r['padding']}"
               + (f" g{r['groups']}" if r["groups"] > 1 else ""))
        lines.append(
            f"| {r['suite']} | {r['layer']} | {r['N']} | {geo} | {r['pass']} | {r['algo'] or '—'} | "
            f"{_f(r['time_ms'], '.4g')} ({_f(r['time_q25_ms'], '.4g')}–{_f(r['time_q75_ms'], '.4g')}) | "
            f"{_f(r['torch_ms'], '.4g')} | {r['torch_backend']} | {_f(r['gemm_ms'], '.4g')} | "
            f"{_f(r['unfold_ms'], '.4g')} | {_f(r['linear_ms'], '.4g')} | {_f(r['speedup'])} | "
            f"{_f(r['gflops'], '.4g')} | {_f(r['gbps'], '.4g')} | {r.get('warning') or ''} |")
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
    lines = ["", f"{'suite':<14} {'pass':<7} {'algo':<10} {'layers':>8} {'geomean speedup':>16} "
                 f"{'vs GEMM':>8} {'Σcount×ms':>11} {'torch Σ':>11}"]
    subset = False
    for s in summary_table(rows):
        subset |= not s["complete"]
        lines.append(f"{s['suite']:<14} {s['pass']:<7} {s['algo']:<10} {_layers_cell(s):>8} "
                     f"{_f(s['geomean_speedup']):>16} {_f(s['geomean_vs_gemm']):>8} "
                     f"{_f(s['timed_ms'], '.4g'):>11} {_f(s['timed_torch_ms'], '.4g'):>11}"
                     + ("" if s["all_ok"] else "  (WRONG OUTPUTS)")
                     + (f"  ({s['flagged']} rows flagged)" if s["flagged"] else ""))
    lines.append("Σcount×ms: sum over the timed layers of count x median ms"
                 + (" (k of n layers: a subset, not the whole network)" if subset else
                    " (every layer of each table: a network table's whole conv time)"))
    return "\n".join(lines)
