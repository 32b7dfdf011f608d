"""NCHW fp32 (TF32) implicit GEMM vs cuDNN on ResNet-50's conv layers, per layer and direction.

For every layer of the `resnet50` table (batch 32, NCHW, cudnn.allow_tf32=True) and each of
forward, grad_input, grad_weight (not the stem's grad_input: an image needs no gradient),
times with CUDA graphs (GPU work only), each variant an `igemm.IgemmPolicy`:
  new      the committed choices (igemm.POLICY)
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

Rounds 1 and 2 (results/igemm_nchw/round1.log, round2.log) ran this experiment at commits
before 74ea11f, with an `orig` column (the kernels before the NCHW work, a copy imported as
`kernels_orig`) that this version, written against the current code, no longer has.

    python dev/triton/igemm_nchw.py                       # on the GPU machine
    TRITON_INTERPRET=1 python dev/triton/igemm_nchw.py --smoke   # every variant, tiny, CPU
Compile phase: `--shard i/n` processes run every variant once with FASTCONV_TUNE=compile
(Triton's cache warms in parallel), then one process tunes and times.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch
import torch.nn.functional as F

from fastconv.kernels import _common, igemm
from fastconv.kernels.timing import cuda_graph_time

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
VARIANTS = ("new", "w", "w_pm", "cl", "cl_core", "nhwc", "cudnn")
COMPILED = ("new", "w", "w_pm", "cl", "nhwc")  # the variants whose plans compile
ACTIVE = set(VARIANTS)  # --variants
CHOICES = ("new", "w", "w_pm", "cl")  # the candidates a plan could take
TOL = 5e-3
DEVICE = "cuda"


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
    if variant == "w":
        return direction != "fwd" or kind(layer) != "1x1"  # a 1x1 weight is already c-major
    if variant in ("w_pm", "cl"):
        return direction != "fwd"  # round 1: forward pm_w and 1x1 via cl lost; kxk: = new
    return True


EVERY = frozenset({"1x1", "kxk", "gather"})
NONE = frozenset()


def policy(variant) -> igemm.IgemmPolicy:
    """The IgemmPolicy of one variant (the committed one for new, nhwc and cudnn)."""
    base = igemm.POLICY
    dirs = ("fwd", "grad_input", "grad_weight")
    if variant in ("w", "w_pm"):
        pm = {"fwd": frozenset({"gather"}), "grad_input": NONE, "grad_weight": NONE}
        if variant == "w_pm":
            pm.update(grad_input=EVERY, grad_weight=EVERY)
        return dataclasses.replace(base, nchw_pix_major=pm,
                                   nchw_via_channels_last={d: NONE for d in dirs},
                                   nchw_weight_copy={"fwd": EVERY, "grad_input": EVERY},
                                   grad_weight_tap_blocked=True)
    if variant in ("cl", "cl_core"):
        return dataclasses.replace(base, nchw_via_channels_last={d: EVERY for d in dirs},
                                   nchw_via_cl_max_plane={d: 1 << 30 for d in dirs},
                                   nchw_weight_copy={"fwd": EVERY, "grad_input": EVERY},
                                   grad_weight_tap_blocked=True)
    return base


POLICIES = {v: policy(v) for v in VARIANTS}


def tensors(layer, seed, dtype=None):
    _, c, h, k, r, s, p, _ = layer
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(BATCH, c, h, h, device=DEVICE, generator=g)
    w = torch.randn(k, c, r, r, device=DEVICE, generator=g) / (c * r * r) ** 0.5
    ho = (h + 2 * p - r) // s + 1
    dy = torch.randn(BATCH, k, ho, ho, device=DEVICE, generator=g)
    if dtype is not None:
        x, w, dy = x.to(dtype), w.to(dtype), dy.to(dtype)
    return x, w, dy


def references(layer, x, w, dy):
    _, c, h, k, r, s, p, _ = layer
    return {"fwd": F.conv2d(x.double(), w.double(), None, s, p),
            "gi": torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), s, p),
            "gw": torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), s, p)}


def smoke():
    """Every variant's plan and check on tiny CPU stand-ins (TRITON_INTERPRET=1): no timing."""
    global BATCH, DEVICE
    BATCH, DEVICE = 2, "cpu"
    _common.set_debug_poison(True)
    small = {(n, min(c, 48), min(h, 9), min(k, 40), r, s, p, cnt)
             for n, c, h, k, r, s, p, cnt in LAYERS}
    for layer in sorted(small):
        x, w, dy = tensors(layer, 0)
        refs = references(layer, x, w, dy)
        for d in DIRECTIONS:
            for v in VARIANTS:
                if applies(d, v, layer):
                    err = rel(build(d, v, layer, x, w, dy)(), refs[d])
                    assert err < 1e-5, (layer, d, v, err)
        print("smoke ok", layer, flush=True)


def build(direction, variant, layer, x, w, dy):
    """fn() -> the direction's result, for one variant; planning (and tuning) here."""
    _, c, h, k, r, s, p, _ = layer
    st, pad, dil = (s, s), (p, p, p, p), (1, 1)
    if variant == "cudnn":
        if direction == "fwd":
            return lambda: F.conv2d(x, w, None, s, p)
        if direction == "gi":
            return lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, s, p)
        return lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, s, p)
    fam, pol = igemm.FAMILY, POLICIES[variant]
    if variant in ("cl_core", "nhwc"):
        x, w, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, w, dy))
        if direction == "gi" and variant == "cl_core":  # as cl: the weight k-innermost
            w = w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    if direction == "fwd":
        plan = fam.plan_forward(x, w, None, st, pad, dil, 1, "none", pol)
        return lambda: plan.run(x, w, None)
    if direction == "gi":
        plan = fam.plan_grad_input(dy, w, tuple(x.shape), st, pad, dil, 1, pol)
        return lambda: plan.run(dy, w)
    plan = fam.plan_grad_weight(dy, x, tuple(w.shape), st, pad, dil, 1, pol)
    return lambda: plan.run(dy, x)


def graph_time(fn):
    """GPU time per call (us), from CUDA-graph replays (kernels/timing.py)."""
    return cuda_graph_time(fn, calls=10, reps=10) * 1e3


def compile_shard(args):
    torch.backends.cudnn.allow_tf32 = True
    os.environ["FASTCONV_TUNE"] = "compile"
    i, n = map(int, args.shard.split("/"))
    tasks = [(li, d, v) for li in ORDER for v in COMPILED for d in DIRECTIONS
             if applies(d, v, LAYERS[li])]
    done = 0
    for li, d, v in tasks[i::n]:
        if time.time() - T0 > args.compile_until:
            break
        x, w, dy = tensors(LAYERS[li], li)
        try:
            build(d, v, LAYERS[li], x, w, dy)()
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


def run_timing(args):
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    poison = _common.set_debug_poison  # NaN-filled outputs for the check; off while timing
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
        x, w, dy = tensors(layer, li)
        cnt = layer[7]
        torch.backends.cudnn.benchmark = False
        refs = references(layer, x, w, dy)
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
                    fn = build(d, v, layer, x, w, dy)
                    out = fn()
                    poison(False)
                    err = rel(out, refs[d])
                    if not err < TOL:
                        row[v] = ("BAD", err)
                        continue
                    row[v] = (graph_time(fn), err)
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

    # Totals weighted by occurrences. A variant that does not apply to a row stands in with
    # "new" (what the plan does there).
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
    ap.add_argument("--shard", default=None, help="i/n: compile-only worker")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU check of every variant")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the variants to run")
    ap.add_argument("--compile-until", type=float, default=80.0, help="s after T0")
    ap.add_argument("--until", type=float, default=150.0, help="no new layer after this (s)")
    ap.add_argument("--hard", type=float, default=158.0, help="no new variant after this (s)")
    args = ap.parse_args()
    ACTIVE.intersection_update(args.variants.split(","))
    if args.smoke:
        smoke()
    elif args.shard:
        compile_shard(args)
    else:
        os.environ.setdefault("FASTCONV_TUNE", "race")  # each variant's tuned tiles, as before
        run_timing(args)


if __name__ == "__main__":
    main()
