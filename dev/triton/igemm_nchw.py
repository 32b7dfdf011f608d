"""NCHW fp32 (TF32) implicit GEMM vs cuDNN on ResNet-50's conv layers, per layer and direction.

For every layer of the `resnet50` table (batch 32, NCHW, cudnn.allow_tf32=True) and each of
forward, grad_input, grad_weight (not the stem's grad_input: an image needs no gradient),
times with CUDA graphs (GPU work only):
  orig     the kernels before the nchw branch (a copy, package `kernels_orig`), tuner on
  new      kernels/igemm.py with its NCHW choices as committed (NCHW_* constants)
  w        no PIX_MAJOR tiles but the weight copied per call into reduction order, no
           channels_last detour, tap-blocked grad_weight
  w_pm     as w with PIX_MAJOR tiles (grad_input, grad_weight)
  cl       every conv through the channels_last kernels on transposed copies (the plans'
           own detour, copies timed; grad_input with the weight k-innermost, grad_weight)
  cl_core  the channels_last kernels on pre-transposed tensors (no copies; grad_input's
           weight k-innermost)
  nhwc     the committed plans on channels_last x, w, dy (a channels_last fp32 model)
  cudnn    F.conv2d / torch.nn.grad.conv2d_input / conv2d_weight, cudnn.benchmark=True
Every variant is checked against float64 first (rel. error < 5e-3, outputs NaN-poisoned).
Totals weight each layer by how often it occurs in ResNet-50.
Round 1 (benchmarks/results/nvidia-h200/nchw/round1.log) ran an earlier version of this
script: orig, pm (PIX_MAJOR everywhere), pm_w (pm + weight copy), cl, cl_core, cudnn.

Ran on commit 74ea11f (round 2; round 1 on an earlier version). It sets the NCHW choices as
module globals of that commit's kernels/igemm.py; today they are fields of igemm.IgemmPolicy.

Standalone (no C++ extension): `python benchmarks/nchw_exp.py --kernels DIR` where DIR holds
`kernels/` (this branch) and `kernels_orig/` (the kernels to compare against). Compile phase:
`--shard i/n` processes run every variant once with FASTCONV_TUNE=compile (Triton's cache
warms in parallel), then one process tunes and times.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

T0 = float(os.environ.get("NCHW_EXP_T0", time.time()))

# name, C, H, K, R, stride, padding, count (fastconv/bench/tables/resnet50.csv)
LAYERS = [
    ("conv1_7x7_s2", 3, 224, 64, 7, 2, 3, 1),
    ("l1_1x1_64to64", 64, 56, 64, 1, 1, 0, 1),
    ("l1_3x3_64", 64, 56, 64, 3, 1, 1, 3),
    ("l1_1x1_64to256", 64, 56, 256, 1, 1, 0, 4),
    ("l1_1x1_256to64", 256, 56, 64, 1, 1, 0, 2),
    ("l2_1x1_256to128", 256, 56, 128, 1, 1, 0, 1),
    ("l2_3x3_128_s2", 128, 56, 128, 3, 2, 1, 1),
    ("l2_ds_256to512_s2", 256, 56, 512, 1, 2, 0, 1),
    ("l2_1x1_128to512", 128, 28, 512, 1, 1, 0, 4),
    ("l2_1x1_512to128", 512, 28, 128, 1, 1, 0, 3),
    ("l2_3x3_128", 128, 28, 128, 3, 1, 1, 3),
    ("l3_1x1_512to256", 512, 28, 256, 1, 1, 0, 1),
    ("l3_3x3_256_s2", 256, 28, 256, 3, 2, 1, 1),
    ("l3_ds_512to1024_s2", 512, 28, 1024, 1, 2, 0, 1),
    ("l3_1x1_256to1024", 256, 14, 1024, 1, 1, 0, 6),
    ("l3_1x1_1024to256", 1024, 14, 256, 1, 1, 0, 5),
    ("l3_3x3_256", 256, 14, 256, 3, 1, 1, 5),
    ("l4_1x1_1024to512", 1024, 14, 512, 1, 1, 0, 1),
    ("l4_3x3_512_s2", 512, 14, 512, 3, 2, 1, 1),
    ("l4_ds_1024to2048_s2", 1024, 14, 2048, 1, 2, 0, 1),
    ("l4_1x1_512to2048", 512, 7, 2048, 1, 1, 0, 3),
    ("l4_1x1_2048to512", 2048, 7, 512, 1, 1, 0, 2),
    ("l4_3x3_512", 512, 7, 512, 3, 1, 1, 2),
]
BATCH = 32
DIRECTIONS = ("fwd", "gi", "gw")
VARIANTS = ("orig", "new", "w", "w_pm", "cl", "cl_core", "nhwc", "cudnn")
COMPILED = ("orig", "new", "w", "w_pm", "cl", "nhwc")  # the variants whose plans compile
ACTIVE = set(VARIANTS)  # --variants
CHOICES = ("new", "w", "w_pm", "cl")  # the candidates a plan could take
SKIP_ORIG = set()  # layers whose orig numbers an earlier run has (--skip-orig)
TOL = 5e-3
GRAPH_CALLS = 10


def flops(layer):
    _, c, h, k, r, s, p, _ = layer
    ho = (h + 2 * p - r) // s + 1
    return 2 * BATCH * k * ho * ho * c * r * r


# Most weighted work first: a run cut short by its time budget still has the big layers.
ORDER = sorted(range(len(LAYERS)), key=lambda i: -flops(LAYERS[i]) * LAYERS[i][7])


def kind(layer):
    _, c, _, _, r, _, _, _ = layer
    return "gather" if c % 16 else ("1x1" if r == 1 else "kxk")


def applies(direction, variant, layer):
    if variant not in ACTIVE:
        return False
    if direction == "gi" and kind(layer) == "gather":
        return False  # the stem: its input (the image) needs no gradient
    if variant == "orig":
        return layer[0] not in SKIP_ORIG
    if variant == "w":
        return direction != "fwd" or kind(layer) != "1x1"  # a 1x1 weight is already c-major
    if variant in ("w_pm", "cl"):
        return direction != "fwd"  # round 1: forward pm_w and 1x1 via cl lost; kxk: = new
    return True


EVERY = frozenset({"1x1", "kxk", "gather"})
NONE = frozenset()
DEFAULTS = {}


def configure(new, variant):
    """Set kernels/igemm.py's NCHW choices for one variant (the committed ones for 'new')."""
    if not DEFAULTS:
        DEFAULTS.update(pm=dict(new.NCHW_PIX_MAJOR), copy=dict(new.NCHW_WEIGHT_COPY),
                        via=dict(new.NCHW_VIA_CHANNELS_LAST), tap=new.GRAD_WEIGHT_TAP_BLOCKED)
    pm, copy, via, tap = (dict(DEFAULTS["pm"]), dict(DEFAULTS["copy"]), dict(DEFAULTS["via"]),
                          DEFAULTS["tap"])
    if variant in ("w", "w_pm"):
        via = {d: NONE for d in via}
        copy = {d: EVERY for d in copy}
        pm = {"fwd": frozenset({"gather"}), "grad_input": NONE, "grad_weight": NONE}
        if variant == "w_pm":
            pm.update(grad_input=EVERY, grad_weight=EVERY)
        tap = True
    elif variant in ("cl", "cl_core"):
        via = {d: EVERY for d in via}
        copy = {d: EVERY for d in copy}  # grad_input: the weight k-innermost
        tap = True
    new.NCHW_PIX_MAJOR, new.NCHW_WEIGHT_COPY, new.NCHW_VIA_CHANNELS_LAST = pm, copy, via
    new.GRAD_WEIGHT_TAP_BLOCKED = tap


DEVICE = "cuda"


# bf16 NCHW (PIX_MAJOR applies to every dtype): a few layers, orig vs pm vs cuDNN, timed
# after the fp32 table if time is left.
BF16_LAYERS = [2, 15, 16, 10]  # l1_3x3_64, l3_1x1_1024to256, l3_3x3_256, l2_3x3_128
BF16_VARIANTS = ("orig", "new", "cudnn")


def tensors(torch, layer, seed, dtype=None):
    _, c, h, k, r, s, p, _ = layer
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(BATCH, c, h, h, device=DEVICE, generator=g)
    w = torch.randn(k, c, r, r, device=DEVICE, generator=g) / (c * r * r) ** 0.5
    ho = (h + 2 * p - r) // s + 1
    dy = torch.randn(BATCH, k, ho, ho, device=DEVICE, generator=g)
    if dtype is not None:
        x, w, dy = x.to(dtype), w.to(dtype), dy.to(dtype)
    return x, w, dy


def smoke(mods):
    """Every variant's plan and check on tiny CPU stand-ins (TRITON_INTERPRET=1): no timing."""
    import torch
    import torch.nn.functional as F
    global BATCH, DEVICE
    BATCH, DEVICE = 2, "cpu"
    for m in mods:
        sys.modules[m.__name__.rsplit(".", 1)[0] + "._common"].set_debug_poison(True)
    small = {(n, min(c, 48), min(h, 9), min(k, 40), r, s, p, cnt)
             for n, c, h, k, r, s, p, cnt in LAYERS}
    for layer in sorted(small):
        x, w, dy = tensors(torch, layer, 0)
        _, c, h, k, r, s, p, _ = layer
        refs = {"fwd": F.conv2d(x.double(), w.double(), None, s, p),
                "gi": torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), s, p),
                "gw": torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), s, p)}
        for d in DIRECTIONS:
            for v in VARIANTS:
                if applies(d, v, layer):
                    for mod in mods:
                        mod._fwd_plans.clear()
                        mod._bwd_input_plans.clear()
                        mod._bwd_weight_plans.clear()
                    err = rel(build(mods, d, v, layer, x, w, dy)(), refs[d])
                    assert err < 1e-5, (layer, d, v, err)
        print("smoke ok", layer, flush=True)


def build(mods, direction, variant, layer, x, w, dy):
    """fn() -> the direction's result (NCHW), for one variant; planning (and tuning) here."""
    import torch
    import torch.nn.functional as F
    orig, new = mods
    _, c, h, k, r, s, p, _ = layer
    st, pad, dil = (s, s), (p, p, p, p), (1, 1)
    cl = torch.channels_last
    if variant == "cudnn":
        if direction == "fwd":
            return lambda: F.conv2d(x, w, None, s, p)
        if direction == "gi":
            return lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, s, p)
        return lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, s, p)
    if variant == "orig":
        mod = orig
    else:
        mod = new
        configure(new, variant)
    if variant in ("cl_core", "nhwc"):
        xc, wc, dyc = (t.contiguous(memory_format=cl) for t in (x, w, dy))
        if direction == "gi" and variant == "cl_core":  # as cl: the weight k-innermost
            wc = w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
        if direction == "fwd":
            plan = mod._plan_conv2d(xc, wc, None, st, pad, dil, 1, "none")
            return lambda: plan(xc, wc, None)
        if direction == "gi":
            plan = mod._plan_grad_input(dyc, wc, list(x.shape), st, pad, dil, 1)
            return lambda: plan(dyc, wc)
        plan = mod._plan_grad_weight(dyc, xc, list(w.shape), st, pad, dil, 1)
        return lambda: plan(dyc, xc)
    if direction == "fwd":
        plan = mod._plan_conv2d(x, w, None, st, pad, dil, 1, "none")
        return lambda: plan(x, w, None)
    if direction == "gi":
        plan = mod._plan_grad_input(dy, w, list(x.shape), st, pad, dil, 1)
        return lambda: plan(dy, w)
    plan = mod._plan_grad_weight(dy, x, list(w.shape), st, pad, dil, 1)
    return lambda: plan(dy, x)


def import_kernels(kdir):
    sys.path.insert(0, kdir)
    from kernels import igemm as new  # noqa: E402
    from kernels_orig import igemm as orig  # noqa: E402
    from kernels_orig import _common as orig_common
    orig_common.TileTuner.FILE = "tiles_orig.json"  # the two families must not share choices
    return orig, new


def graph_time(torch, fn, reps=10):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(GRAPH_CALLS):
            fn()
    g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / GRAPH_CALLS)
    del g
    return sorted(times)[len(times) // 2]


def compile_shard(args, mods):
    import torch
    torch.backends.cudnn.allow_tf32 = True
    os.environ["FASTCONV_TUNE"] = "compile"
    i, n = map(int, args.shard.split("/"))
    tasks = [(li, d, v, None) for li in ORDER for v in COMPILED for d in DIRECTIONS
             if applies(d, v, LAYERS[li])]
    if args.bf16:
        tasks += [(li, d, v, torch.bfloat16) for li in BF16_LAYERS for v in ("orig", "new")
                  for d in DIRECTIONS if applies(d, v, LAYERS[li])]
    done = 0
    for li, d, v, dt in tasks[i::n]:
        if time.time() - T0 > args.compile_until:
            break
        x, w, dy = tensors(torch, LAYERS[li], li, dt)
        try:
            build(mods, d, v, LAYERS[li], x, w, dy)()
        except Exception as e:  # reported again, with the layer, by the timing process
            print(f"compile {LAYERS[li][0]} {d} {v}: {e!r}"[:300], flush=True)
        done += 1
    torch.cuda.synchronize()
    print(f"shard {i}/{n}: {done}/{len(tasks[i::n])} tasks, {time.time() - T0:.0f} s", flush=True)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def short(cfg):
    if not isinstance(cfg, dict):
        return "-"
    t = f"{cfg.get('BLOCK_M')}x{cfg.get('BLOCK_N')}x{cfg.get('BLOCK_K')}w{cfg.get('num_warps')}s{cfg.get('num_stages')}"
    return t + ("N" if cfg.get("NESTED") else "") + ("T" if cfg.get("KIND") == "tma" else "") + (
        "*" if cfg.get("NCHW") else "")


def run_timing(args, mods):
    import torch
    import torch.nn.functional as F
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    commons = [sys.modules[m.__name__.rsplit(".", 1)[0] + "._common"] for m in mods]

    def poison(on):  # NaN-filled outputs for the check; off while timing (a fill per call)
        for cm in commons:
            cm.set_debug_poison(on)
    print(f"{torch.__version__} cudnn {torch.backends.cudnn.version()} "
          f"{torch.cuda.get_device_name()} start {time.time() - T0:.0f} s", flush=True)
    rows = {}
    picks = []
    hdr = f"{'layer':22s} {'n':>2s} {'dir':3s} " + " ".join(f"{v:>8s}" for v in VARIANTS) + \
        "   " + " ".join(f"x({v})" for v in COMPILED) + "  [us; x = cudnn/ours]"
    print(hdr, flush=True)
    stop = False
    for li in ORDER:
        if stop or time.time() - T0 > args.until:
            print(f"-- time budget: stopped before {LAYERS[li][0]}", flush=True)
            break
        layer = LAYERS[li]
        x, w, dy = tensors(torch, layer, li)
        _, c, h, k, r, s, p, cnt = layer
        torch.backends.cudnn.benchmark = False
        refs = {"fwd": F.conv2d(x.double(), w.double(), None, s, p),
                "gi": torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), s, p),
                "gw": torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), s, p)}
        torch.backends.cudnn.benchmark = True
        for d in DIRECTIONS:
            if not any(applies(d, v, layer) for v in VARIANTS):
                continue
            row = {}
            for v in VARIANTS:
                if not applies(d, v, layer):
                    continue
                if time.time() - T0 > args.hard:
                    stop = True
                    break
                try:
                    poison(True)
                    fn = build(mods, d, v, layer, x, w, dy)
                    out = fn()
                    poison(False)
                    err = rel(out, refs[d])
                    if not err < TOL:
                        row[v] = ("BAD", err)
                        continue
                    row[v] = (graph_time(torch, fn), err)
                except Exception as e:
                    print(f"   {layer[0]} {d} {v}: {e!r}"[:300], flush=True)
                    row[v] = ("ERR", None)
                    poison(False)
            rows[(li, d)] = row
            cu = row.get("cudnn", ("-",))[0]
            cells = " ".join(f"{row[v][0]:8.1f}" if isinstance(row.get(v, ("-",))[0], float)
                             else f"{row.get(v, ('-',))[0]:>8s}" for v in VARIANTS)
            ratios = " ".join(f"{cu / row[v][0]:5.2f}" if isinstance(row.get(v, ("-",))[0], float)
                              and isinstance(cu, float) else "    -" for v in COMPILED)
            print(f"{layer[0]:22s} {cnt:2d} {d:3s} {cells}   {ratios}  t={time.time() - T0:.0f}",
                  flush=True)
        del x, w, dy, refs
        torch.cuda.empty_cache()

    bf16 = BF16_LAYERS if args.bf16 and not stop else ()
    if bf16:
        print("\n== bf16 NCHW (us; x = cudnn/ours) ==", flush=True)
    for li in bf16:
        if time.time() - T0 > args.hard:
            break
        layer = LAYERS[li]
        x, w, dy = tensors(torch, layer, li, torch.bfloat16)
        _, c, h, k, r, s, p, cnt = layer
        torch.backends.cudnn.benchmark = False
        refs = {"fwd": F.conv2d(x.double(), w.double(), None, s, p),
                "gi": torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), s, p),
                "gw": torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), s, p)}
        torch.backends.cudnn.benchmark = True
        for d in DIRECTIONS:
            cells = {}
            for v in BF16_VARIANTS:
                if not applies(d, v, layer):
                    continue
                if time.time() - T0 > args.hard:
                    break
                try:
                    poison(True)
                    fn = build(mods, d, v, layer, x, w, dy)
                    err = rel(fn(), refs[d])
                    poison(False)
                    cells[v] = graph_time(torch, fn) if err < 2e-2 else f"BAD{err:.0e}"
                except Exception as e:
                    poison(False)
                    cells[v] = "ERR"
                    print(f"   bf16 {layer[0]} {d} {v}: {e!r}"[:300], flush=True)
            cu = cells.get("cudnn")
            print(f"bf16 {layer[0]:22s} {d:3s} " + " ".join(
                f"{v}={cells[v]:.1f}" + (f"({cu / cells[v]:.2f}x)" if isinstance(cu, float) else "")
                if isinstance(cells.get(v), float) else f"{v}={cells.get(v, '-')}"
                for v in BF16_VARIANTS) + f"  t={time.time() - T0:.0f}", flush=True)
        del x, w, dy, refs

    # Totals weighted by occurrences. A variant that does not apply to a row stands in with
    # "new" (what the plan does there); orig only over the rows it was timed on.
    def val(row, v):
        t = row.get(v, ("-",))[0]
        return t if isinstance(t, float) else None

    print("\n== totals (us, weighted by occurrences in ResNet-50; x = cudnn/ours over the same "
          "rows) ==", flush=True)
    for d in DIRECTIONS + ("all",):
        parts = []
        for v in [v for v in VARIANTS if v in ACTIVE] + ["best"]:
            sv = sc = 0.0
            nr = 0
            for (li, dd), row in rows.items():
                if d != "all" and dd != d:
                    continue
                cu, nw = val(row, "cudnn"), val(row, "new")
                if cu is None or nw is None:
                    continue
                if v == "best":
                    t = min(x for x in (val(row, c) for c in CHOICES) if x is not None)
                elif v in row:
                    t = val(row, v)
                elif v == "orig":
                    t = None
                else:
                    t = nw
                if t is None:
                    continue
                cnt = LAYERS[li][7]
                sv += cnt * t
                sc += cnt * cu
                nr += 1
            parts.append(f"{v}={sv:7.0f}({sc / sv:.2f}x,{nr})" if sv else f"{v}=-")
        print(f"{d:4s} " + " ".join(parts), flush=True)
    wins = {}
    for (li, d), row in rows.items():
        ok = {v: val(row, v) for v in CHOICES if val(row, v) is not None}
        if ok:
            wins.setdefault((d, kind(LAYERS[li])), []).append(min(ok, key=ok.get))
    print("fastest candidate per (direction, kind), rows won:", flush=True)
    for key, ws in sorted(wins.items()):
        print(f"  {key}: " + ", ".join(f"{v}={ws.count(v)}" for v in CHOICES), flush=True)
    log = os.environ.get("FASTCONV_TUNE_LOG")
    if log and os.path.exists(log):
        print("\n== tuner: keys where an NCHW-only tile (*) won; best plain-list tile ==", flush=True)
        n_keys = 0
        for line in open(log):
            e = json.loads(line)
            ts = [(t, c) for c, t in e["times_us"] if isinstance(t, float)]
            if not ts or "|32x" not in e["key"]:
                continue
            n_keys += 1
            best = min(ts, key=lambda z: z[0])
            if best[1].get("NCHW"):
                plain = [z for z in ts if not z[1].get("NCHW")]
                pb = min(plain, key=lambda z: z[0]) if plain else (float("nan"), None)
                print(f"  {'|'.join(e['key'].split('|')[i] for i in (0, 3, 4, 5, 8))}"
                      f"{e['key'].split('tf32')[-1]} {short(best[1])} {best[0]:.1f} | "
                      f"{short(pb[1])} {pb[0]:.1f}", flush=True)
        print(f"  ({n_keys} keys tuned)", flush=True)
    print(f"done {time.time() - T0:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", required=True, help="dir holding kernels/ and kernels_orig/")
    ap.add_argument("--shard", default=None, help="i/n: compile-only worker")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU check of every variant")
    ap.add_argument("--bf16", action="store_true", help="also a few bf16 NCHW layers")
    ap.add_argument("--skip-orig", default="", help="layer names whose orig numbers exist")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the variants to run")
    ap.add_argument("--compile-until", type=float, default=80.0, help="s after T0")
    ap.add_argument("--until", type=float, default=150.0, help="no new layer after this (s)")
    ap.add_argument("--hard", type=float, default=158.0, help="no new variant after this (s)")
    args = ap.parse_args()
    mods = import_kernels(os.path.abspath(args.kernels))
    SKIP_ORIG.update(n for n in args.skip_orig.split(",") if n)
    ACTIVE.intersection_update(args.variants.split(","))
    if args.smoke:
        smoke(mods)
    elif args.shard:
        compile_shard(args, mods)
    else:
        run_timing(args, mods)


if __name__ == "__main__":
    main()
