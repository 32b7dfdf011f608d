"""Pictures of `fastconv explain --out DIR` (matplotlib, Agg, PNG).

- access_pattern.png: for a small layer, the input elements one work unit of
  im2col, direct and depthwise touches (NCHW and NHWC side by side), drawn in
  memory order, coloured by when each is first touched, and how often.
- reuse_distance.png: reuse-distance histograms per algorithm (simulated), with
  the cache sizes marked: every access right of a cache's line is a miss there.
- roofline.png: the measured ceilings with the modelled points (intensity at
  each level) and the measured ones.
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


# A small layer: every pattern is visible at a glance.
SMALL_DENSE = ConvSpec(1, 8, 10, 10, 16, 3, 3, padding=(1, 1, 1, 1))
SMALL_DEPTHWISE = ConvSpec(1, 16, 10, 10, 16, 3, 3, padding=(1, 1, 1, 1), groups=16)


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


def access_pattern(out_dir: str) -> str:
    plt = _plt()
    cases = [("im2col", SMALL_DENSE), ("direct", SMALL_DENSE), ("depthwise", SMALL_DEPTHWISE)]
    fig, axes = plt.subplots(2, 6, figsize=(20, 9), squeeze=False)
    col = 0
    for algo, base in cases:
        for layout in ("nchw", "nhwc"):
            spec = base.with_(layout=layout)
            order, count = input_touch_map(algo, spec)
            ax = axes[0][col]
            im = ax.imshow(order, aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_title(f"{algo} {layout.upper()}\nfirst touch (0 = first)", fontsize=9)
            ax.set_xlabel("w" if layout == "nchw" else "c")
            ax.set_ylabel("(c, h) row" if layout == "nchw" else "(h, w) row")
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax = axes[1][col]
            im = ax.imshow(count, aspect="auto", cmap="magma", interpolation="nearest")
            ax.set_title("touches per input element", fontsize=9)
            ax.set_xlabel("w" if layout == "nchw" else "c")
            fig.colorbar(im, ax=ax, fraction=0.046)
            col += 1
    fig.suptitle(f"Input elements touched by one work unit, in memory order (dense: {SMALL_DENSE.describe()}; "
                 f"depthwise: {SMALL_DEPTHWISE.describe()}). im2col: one pixel tile's column build; "
                 "direct: one register tile; depthwise: one task (NHWC: an output row; NCHW: a 16-row block of one channel, which reads the input once into its row buffer)",
                 fontsize=9)
    fig.tight_layout()
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
    fig, ax = plt.subplots(figsize=(8, 6))
    xs = np.logspace(-2, 3, 200)
    if c:
        peak = c["peak_gflops"]
        ax.axhline(peak, color="k", lw=1)
        ax.text(xs[0], peak * 1.05, f"matmul {peak:.0f} GFLOP/s")
        for lv, bw in c["bandwidth_gbs"].items():
            ax.plot(xs, np.minimum(xs * bw, peak), lw=1, ls="--", label=f"{lv} {bw:.0f} GB/s")
    markers = {"L1": "o", "L2": "s", "L3": "^", "DRAM": "D", "HBM": "D"}
    for i, a in enumerate(res["algorithms"]):
        color = f"C{i}"
        perf = res["flops"] / (a["measured_ms"] * 1e-3) / 1e9 if a.get("measured_ms") else None
        for lv, inten in a["intensity"].items():
            if not inten:
                continue
            y = perf if perf else (res["flops"] / (a["bound_ms"] * 1e-3) / 1e9 if a.get("bound_ms") else None)
            if y is None:
                continue
            ax.scatter([inten], [y], color=color, marker=markers.get(lv, "o"), facecolors="none" if not perf else color,
                       s=50, label=f"{a['algo']} @ {lv}" if lv == "DRAM" or lv == "HBM" else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity at each level (FLOP/byte): o L1, s L2, ^ L3, D DRAM")
    ax.set_ylabel("GFLOP/s (filled: measured; hollow: roofline bound)")
    ax.set_title(f"Roofline, {res['spec']} {res['layout']}")
    ax.legend(fontsize=7, loc="lower right")
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

    paths = [access_pattern(out_dir)]
    if spec.device == "cpu":
        for a in res["algorithms"]:
            if not a.get("reuse_hist") and a["algo"] in SIMULATED_ALGOS:
                sim = simulate(a["algo"], spec, sample_accesses=2_000_000)
                a["reuse_hist"], a["reuse_cold"] = sim["reuse_hist"], sim["reuse_cold"]
        paths.append(reuse_distance(res, out_dir))
    paths.append(roofline(res, out_dir))
    paths.append(bytes_per_level(spec, res, out_dir))
    return paths
