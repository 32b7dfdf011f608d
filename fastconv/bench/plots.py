"""speedup.png, roofline.png and conv_vs_linear.png (matplotlib, Agg backend: no display needed).

A run whose timings failed the oversubscription/noise checks (fastconv/bench/health.py) gets a
red banner on every plot, and its flagged rows are hatched (bars) or crossed out (points)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import health  # noqa: E402
from .report import geomean  # noqa: E402

_MARKERS = "osD^vP*Xhp<>"
_TORCH_COLOR = "black"


def _algos(rows):
    return sorted({r["algo"] for r in rows if r["algo"]})


def _label(r) -> str:
    return f"{r['suite']}/{r['layer']} N={r['N']}" + ("" if r["pass"] == "fwd" else f" [{r['pass']}]")


def _layers(rows):
    """Distinct (suite, layer, N, pass) in first-seen order, each with its rows."""
    out = {}
    for r in rows:
        out.setdefault((r["suite"], r["layer"], r["N"], r["pass"]), []).append(r)
    return out


def _subtitle(h) -> str:
    lib = (f"cuDNN {h['cudnn']}, TF32 {'on' if h['tf32']['cudnn.allow_tf32'] else 'off'}"
           if h["device"] == "cuda" else f"oneDNN {h['onednn']}")
    return (f"{h['device_name']}, {h['dtype']} {h.get('layout')}, {h['threads']} threads, "
            f"torch {h['torch']}, {lib}")


def _banner(fig, header, rows) -> float:
    """A red banner across the top when the run's timings are not trustworthy; returns the
    figure fraction left below it (1.0: no banner)."""
    import textwrap

    ws = health.run_warnings(header, rows)
    if not ws:
        return 1.0
    text = f"{health.BANNER}: {ws[0]}" + (f" (+{len(ws) - 1} more, see summary.md)" if len(ws) > 1 else "")
    w_in, h_in = fig.get_size_inches()
    lines = textwrap.wrap(text, max(40, int(w_in * 13)))  # ~13 characters of 9-point text per inch
    fig.text(0.5, 0.995, "\n".join(lines), ha="center", va="top", fontsize=9, color="white",
             bbox=dict(facecolor="#C00000", edgecolor="none", boxstyle="round,pad=0.3"))
    return 1.0 - (0.16 * len(lines) + 0.2) / h_in


def _save(fig, path, top: float) -> None:
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_plot(rows, header, path: str) -> None:
    layers = _layers(rows)
    algos = _algos(rows)
    n = max(len(layers), 1)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.28 * n * max(1, len(algos)) ** 0.5))
    height = 0.8 / max(len(algos), 1)
    colors = plt.get_cmap("tab10")
    any_flagged, handles = False, []
    for j, algo in enumerate(algos):
        ys, xs, flagged = [], [], []
        for i, rs in enumerate(layers.values()):
            for r in rs:
                if r["algo"] == algo and r["speedup"] == r["speedup"]:
                    ys.append(i - 0.4 + height * (j + 0.5))
                    xs.append(r["speedup"])
                    flagged.append(bool(r.get("warning")))
        g = geomean(xs)
        bars = ax.barh(ys, xs, height=height, color=colors(j))
        handles.append(Patch(facecolor=colors(j), label=f"{algo} (geomean {g:.3g}x)"))
        for bar, bad in zip(bars, flagged):
            if bad:
                bar.set_hatch("xxx")
                bar.set_edgecolor("#C00000")
                any_flagged = True
    if any_flagged:
        handles.append(Patch(facecolor="white", hatch="xxx", edgecolor="#C00000",
                             label="failed a timing check (see warning column)"))
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    vals = [r["speedup"] for r in rows if r["algo"] and r["speedup"] == r["speedup"] and r["speedup"] > 0]
    if vals:  # keep the 1x line inside, with room on both sides
        ax.set_xlim(min(min(vals), 1.0) / 1.5, max(max(vals), 1.0) * 1.5)
    ax.set_yticks(range(n))
    ax.set_yticklabels([_label(rs[0]) for rs in layers.values()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over PyTorch F.conv2d (torch time / fastconv time; > 1 is faster)")
    backends = sorted({r["torch_backend"] for r in rows})
    ax.set_title(f"fastconv vs PyTorch ({', '.join(backends)})\n{_subtitle(header)}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    _save(fig, path, _banner(fig, header, rows))


def roofline_plot(rows, header, path: str) -> None:
    c = header.get("ceilings")
    fig, ax = plt.subplots(figsize=(11, 6))
    fwd = [r for r in rows if r["pass"] == rows[0]["pass"]] if rows else []
    ai = [r["intensity"] for r in fwd] or [1.0]
    lo, hi = min(ai) / 2, max(ai) * 2
    if c:
        peak, bw = c["matmul_gflops"], c["copy_gbps"]
        knee = peak / bw
        lo, hi = min(lo, knee / 4), max(hi, knee * 4)
        xs = [lo, knee, hi]
        ax.plot(xs, [min(peak, bw * x) for x in xs], color="gray", lw=2,
                label=f"measured ceilings: copy {bw:.1f} GB/s, torch.mm {peak:.1f} GFLOP/s")
        # oneDNN's JIT conv kernels can beat torch.mm's BLAS; show the best rate seen in this run too.
        best = max((r["torch_gflops"] for r in fwd if r["torch_gflops"] == r["torch_gflops"]), default=0)
        if best > peak:
            ax.axhline(best, color="gray", ls="--", lw=1,
                       label=f"best PyTorch conv rate in this run: {best:.1f} GFLOP/s")
    suites = sorted({r["suite"] for r in fwd})
    algos = _algos(fwd)
    colors = plt.get_cmap("tab10")
    seen_torch = flagged = False
    for si, suite in enumerate(suites):
        m = _MARKERS[si % len(_MARKERS)]
        done = set()
        for r in fwd:
            if r["suite"] != suite:
                continue
            if r["algo"] and r["gflops"] == r["gflops"]:
                ax.scatter(r["intensity"], r["gflops"], marker=m, color=colors(algos.index(r["algo"])),
                           s=28, alpha=0.85, edgecolors="none")
                if r.get("warning"):
                    ax.scatter(r["intensity"], r["gflops"], marker="x", color="#C00000", s=60, lw=1)
                    flagged = True
            key = (r["layer"], r["N"])
            if key not in done and r["torch_gflops"] == r["torch_gflops"]:
                done.add(key)
                ax.scatter(r["intensity"], r["torch_gflops"], marker=m, facecolors="none",
                           edgecolors=_TORCH_COLOR, s=28, lw=0.8)
                seen_torch = True
    # Legend: colours = candidates, shapes = suites.
    for j, algo in enumerate(algos):
        ax.scatter([], [], color=colors(j), marker="o", label=f"fastconv {algo}")
    if seen_torch:
        ax.scatter([], [], facecolors="none", edgecolors=_TORCH_COLOR, marker="o", label="PyTorch F.conv2d")
    for si, suite in enumerate(suites):
        ax.scatter([], [], color="gray", marker=_MARKERS[si % len(_MARKERS)], label=suite)
    if flagged:
        ax.scatter([], [], marker="x", color="#C00000", label="failed a timing check")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP / minimal byte: spec.flops / spec.min_bytes)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"roofline ({rows[0]['pass'] if rows else 'fwd'})\n{_subtitle(header)}", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _save(fig, path, _banner(fig, header, rows))


def conv_vs_linear_plot(rows, header, path: str) -> None:
    """The conv_vs_linear suite's layers (the caller draws it only when that suite ran)."""
    chosen = [r for r in rows if r["suite"] == "conv_vs_linear"]
    title = "conv vs the equivalent GEMM vs nn.Linear"
    if not chosen:
        raise ValueError("conv_vs_linear_plot: no conv_vs_linear rows in this run")
    layers = _layers(chosen)
    series = [("PyTorch F.conv2d", "torch_ms"), ("fastconv (best algo)", "best_ms"),
              ("GEMM torch.mm/bmm", "gemm_ms"), ("nn.Linear (F.linear)", "linear_ms"),
              ("F.unfold + matmul", "unfold_ms")]
    vals = {k: [] for _, k in series}
    for rs in layers.values():
        best = [r["time_ms"] for r in rs if r["time_ms"] == r["time_ms"]]
        vals["best_ms"].append(min(best) if best else float("nan"))
        for _, k in series:
            if k != "best_ms":
                vals[k].append(rs[0][k])
    series = [(name, k) for name, k in series if any(v == v for v in vals[k])]
    n = max(len(layers), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * n + 2), 5.5))
    width = 0.8 / max(len(series), 1)
    colors = plt.get_cmap("tab10")
    for j, (name, k) in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        ax.bar(xs, vals[k], width=width, color=colors(j), label=name)
    ax.set_yscale("log")
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"{rs[0]['layer']}\nN={rs[0]['N']} {rs[0]['gemm_op'].split(' ', 1)[-1]}"
                        for rs in layers.values()], fontsize=7, rotation=0 if n <= 8 else 60,
                       ha="center" if n <= 8 else "right")
    ax.set_ylabel("median time (ms, log scale; lower is better)")
    ax.set_title(f"{title}\n{_subtitle(header)}", fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, _banner(fig, header, chosen))


# (file name, function, which runs draw it)
PLOTS = (("speedup.png", speedup_plot, lambda rows: True),
         ("roofline.png", roofline_plot, lambda rows: True),
         ("conv_vs_linear.png", conv_vs_linear_plot,
          lambda rows: any(r["suite"] == "conv_vs_linear" for r in rows)))


def write_all(rows, header, out_dir: str) -> list[str]:
    """Draw the plots this run has data for; their file names."""
    names = []
    for name, fn, applies in PLOTS:
        if applies(rows):
            fn(rows, header, os.path.join(out_dir, name))
            names.append(name)
    return names
