"""Pictures of `fastconv explain --out DIR` (matplotlib, Agg, PNG).

- access_pattern.png: for the layer asked for, the input elements one work unit of
  each applicable simulated algorithm (im2col, direct, depthwise) touches, drawn in
  memory order, coloured by when each is first touched, and how often.
- reuse_distance.png: reuse-distance histograms per algorithm (simulated), with
  the cache sizes marked: every access right of a cache's line is a miss there.
- roofline.png: the measured ceilings (grey roofs) with each algorithm's points
  (its own colour) at its intensity per level: hollow at the roofline bound, filled
  at the measured rate (--measure).
- bytes_per_level.png: bytes each level delivers, per algorithm, stacked by operand.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..spec import ConvSpec

OPERAND_COLORS = {"input": "#4C72B0", "weight": "#DD8452", "output": "#55A868", "column": "#C44E52",
                  "packed_weight": "#8172B3", "pack_a": "#937860", "pack_b": "#DA8BC3"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Algorithms whose one-work-unit input accesses the simulator can record.
PATTERN_ALGOS = ("im2col", "direct", "depthwise")
ROOF_COLOR = "0.35"  # the roofs are grey; the algorithms take the colour cycle


def input_touch_map(algo: str, spec: ConvSpec, max_records: int = 200_000):
    """(first-touch order, touch count) over the input in memory order, as 2-D
    arrays with rows of the innermost dimension (W for NCHW, C for NHWC)."""
    from .simulate import record

    rows = record(algo, spec, unit=0, max_records=max_records)
    if algo == "direct":
        # One register tile: the accesses between two runs of output stores;
        # the largest of the first three (border pixels come alone, first).
        tiles, cur, storing = [], [], False
        for r in rows:
            if r[0] not in (0, 2, 4):  # weight packing and the tile buffer: neither
                continue
            is_store = r[0] == 2 and r[3]
            if storing and not is_store:
                tiles.append(cur)
                cur = []
            storing = is_store
            if not is_store:
                cur.append(r)
        tiles.append(cur)
        rows = max(tiles[:3], key=lambda t: len({off for op, off, _, _ in t if op == 0}))
    n_in = spec.N * spec.C * spec.H * spec.W
    order = np.full(n_in, np.nan)
    count = np.zeros(n_in)
    t = 0
    e = spec.element_size
    for op, off, nbytes, _w in rows:
        if op != 0:
            continue
        for j in range(off // e, min(n_in, (off + nbytes) // e)):
            if math.isnan(order[j]):
                order[j] = t
            count[j] += 1
        t += 1
    width = spec.W if spec.layout == "nchw" else spec.C
    order = order.reshape(-1, width)
    count = count.reshape(-1, width)
    if t:
        order = order / t
    return order, count


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def access_pattern(spec: ConvSpec, out_dir: str, algos=None) -> str:
    """The input elements one work unit of each algorithm touches, for `spec` itself."""
    plt = _plt()
    algos = [a for a in (algos or PATTERN_ALGOS) if a in PATTERN_ALGOS]
    if spec.groups != spec.C:
        algos = [a for a in algos if a != "depthwise"]
    if not algos:
        algos = ["im2col"]
    unit = {"im2col": "one pixel tile's column build", "direct": "one register tile",
            "depthwise": ("one task: an output row" if spec.layout == "nhwc" else
                          "one task: a block of rows of one channel, read once into its row buffer")}
    fig, axes = plt.subplots(2, len(algos), figsize=(4.2 * len(algos) + 1.5, 9), squeeze=False)
    inner = "w" if spec.layout == "nchw" else "c"
    outer = "(c, h)" if spec.layout == "nchw" else "(h, w)"
    for col, algo in enumerate(algos):
        order, count = input_touch_map(algo, spec)
        touched = np.where(~np.isnan(order).all(axis=1))[0]
        lo, hi = (int(touched.min()), int(touched.max()) + 1) if len(touched) else (0, order.shape[0])
        lo, hi = max(0, lo - 1), min(order.shape[0], max(hi + 1, lo + 8))  # a little context
        ext = (-0.5, order.shape[1] - 0.5, hi - 0.5, lo - 0.5)
        ax = axes[0][col]
        im = ax.imshow(order[lo:hi], aspect="auto", cmap="viridis", interpolation="nearest", extent=ext)
        ax.set_title(_wrap(f"{algo}: {unit[algo]}", 40) + "\nfirst touch (0 = first, blank = untouched)",
                     fontsize=9)
        ax.set_xlabel(f"{inner} (innermost in memory)")
        ax.set_ylabel(f"{outer} row of the input, rows {lo}-{hi - 1} of {order.shape[0]}")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax = axes[1][col]
        im = ax.imshow(count[lo:hi], aspect="auto", cmap="magma", interpolation="nearest", extent=ext)
        ax.set_title("touches per input element", fontsize=9)
        ax.set_xlabel(f"{inner} (innermost in memory)")
        ax.set_ylabel(f"{outer} row")
        fig.colorbar(im, ax=ax, fraction=0.046)
    title = (f"Input elements touched by one work unit, in memory order: {spec.describe()}, "
             f"{spec.layout.upper()} (first image of the batch; rows outside those shown are untouched)")
    # ~11 characters of 10-point text per inch of figure
    fig.suptitle(_wrap(title, int(11 * fig.get_size_inches()[0])), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = os.path.join(out_dir, "access_pattern.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def reuse_distance(res: dict, out_dir: str) -> str:
    plt = _plt()
    algos = [a for a in res["algorithms"] if a.get("reuse_hist")]
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / max(1, len(algos))
    for i, a in enumerate(algos):
        h = np.asarray(a["reuse_hist"], dtype=float)
        total = h.sum() + a.get("reuse_cold", 0)
        ax.bar(np.arange(len(h)) + i * width, h / max(total, 1), width=width, label=a["algo"])
    line = res["caches"][0]["line"] if res["caches"] else 64
    for c in res["caches"]:
        b = math.log2(c["size"] / line) + 1
        ax.axvline(b, color="gray", ls="--")
        ax.text(b, ax.get_ylim()[1] * 0.95, f" {c['name']}", color="gray")
    ax.set_xlabel("reuse distance bucket b: 2^(b-1) <= distinct lines in between < 2^b (0: immediate reuse)")
    ax.set_ylabel("fraction of line accesses")
    ax.set_title(f"Reuse distance, {res['spec']} {res['layout']}")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "reuse_distance.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roofline(res: dict, out_dir: str) -> str:
    plt = _plt()
    c = res["ceilings"]
    fig, ax = plt.subplots(figsize=(9, 6))
    xs = np.logspace(-2, 3, 200)
    styles = ["--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    if c:
        peak = c["peak_gflops"]
        ax.axhline(peak, color=ROOF_COLOR, lw=1.5)
        ax.text(xs[0], peak * 1.05, f"matmul peak {peak:.0f} GFLOP/s", color=ROOF_COLOR, fontsize=8)
        for i, (lv, bw) in enumerate(c["bandwidth_gbs"].items()):
            ax.plot(xs, np.minimum(xs * bw, peak), color=ROOF_COLOR, lw=1.2, ls=styles[i % len(styles)],
                    label=f"roof: {lv} {bw:.0f} GB/s")
    markers = {"L1": "o", "L2": "s", "L3": "^", "DRAM": "D", "HBM": "D"}
    measured_any = bound_any = False
    for i, a in enumerate(res["algorithms"]):
        color = f"C{i}"
        perf = res["flops"] / (a["measured_ms"] * 1e-3) / 1e9 if a.get("measured_ms") else None
        bound = res["flops"] / (a["bound_ms"] * 1e-3) / 1e9 if a.get("bound_ms") else None
        ax.scatter([], [], color=color, marker="s", label=a["algo"])
        for lv, inten in a["intensity"].items():
            if not inten:
                continue
            m = markers.get(lv, "o")
            if bound:  # hollow: what the roofline allows at this level's intensity
                ax.scatter([inten], [bound], marker=m, facecolors="none", edgecolors=color, s=60, lw=1.3)
                bound_any = True
            if perf:  # filled: what was measured
                ax.scatter([inten], [perf], marker=m, color=color, s=45)
                measured_any = True
    for lv, m in markers.items():
        if any(lv in a["intensity"] for a in res["algorithms"]) and lv != "HBM":
            ax.scatter([], [], marker=m, color="k", facecolors="none", label=f"at {lv} intensity")
    if bound_any:
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="k", label="hollow: roofline bound")
    if measured_any:
        ax.scatter([], [], marker="o", color="k", label="filled: measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity at each memory level (FLOP per byte that level delivers)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(_wrap(f"Roofline, {res['spec']} {res['layout']}", 90), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = os.path.join(out_dir, "roofline.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def bytes_per_level(spec: ConvSpec, res: dict, out_dir: str) -> str:
    from . import model as cmodel

    plt = _plt()
    levels = list(res["algorithms"][0]["modeled_bytes"]) if res["algorithms"] else []
    fig, axes = plt.subplots(1, max(1, len(levels)), figsize=(4 * max(1, len(levels)), 4.5), squeeze=False)
    caps = {c["name"]: (c["size"], c["ways"], c["line"]) for c in res["caches"]}
    names = list(caps)
    for li, lv in enumerate(levels):
        ax = axes[0][li]
        for ai, a in enumerate(res["algorithms"]):
            bottom = 0.0
            if spec.device == "cpu" and a["algo"] in cmodel.CPU_MODELS:
                m = cmodel.model(a["algo"], spec)
                if li == 0:
                    parts = dict(m.l1_bytes)
                else:
                    size, ways, line = caps[names[li - 1]]
                    sets = max(1, size // (ways * line))
                    parts = {}
                    for t in m.terms:
                        p = 1.0 if t.aliased_out(sets, ways, line) else cmodel.miss_probability(
                            t.distance, sets, ways, line, t.scattered)
                        parts[t.operand] = parts.get(t.operand, 0) + t.bytes * p
            else:
                parts = {"total": a["modeled_bytes"][lv]}
            for op, v in parts.items():
                ax.bar(ai, v / 1e6, bottom=bottom, color=OPERAND_COLORS.get(op, "gray"),
                       label=op if ai == 0 or op not in ax.get_legend_handles_labels()[1] else None)
                bottom += v / 1e6
            sim = (a.get("simulated") or {}).get(lv)
            if sim:
                ax.scatter([ai], [sim["bytes"] / 1e6], color="k", marker="x", zorder=3,
                           label="simulated" if ai == 0 else None)
        ax.axhline(res["min_bytes"] / 1e6, color="gray", ls=":", label="minimal bytes")
        ax.set_xticks(range(len(res["algorithms"])))
        ax.set_xticklabels([a["algo"] for a in res["algorithms"]], rotation=20)
        ax.set_title(f"bytes delivered by {lv}")
        ax.set_ylabel("MB")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.suptitle(f"Modelled bytes per level by operand (x: simulated), {res['spec']} {res['layout']}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "bytes_per_level.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_all(spec: ConvSpec, res: dict, out_dir: str) -> list[str]:
    """Write every picture; simulates (quickly) for the reuse histograms if needed."""
    from .simulate import SIMULATED_ALGOS, simulate

    paths = [access_pattern(spec, out_dir, [a["algo"] for a in res["algorithms"]])]
    if spec.device == "cpu":
        for a in res["algorithms"]:
            if not a.get("reuse_hist") and a["algo"] in SIMULATED_ALGOS:
                sim = simulate(a["algo"], spec, sample_accesses=2_000_000)
                a["reuse_hist"], a["reuse_cold"] = sim["reuse_hist"], sim["reuse_cold"]
        paths.append(reuse_distance(res, out_dir))
    paths.append(roofline(res, out_dir))
    paths.append(bytes_per_level(spec, res, out_dir))
    return paths
