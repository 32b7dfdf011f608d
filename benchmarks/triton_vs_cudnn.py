"""Time fastconv's Triton kernels against cuDNN (F.conv2d, cudnn.benchmark=True) on real
layer shapes, with the same dtype, layout and TF32 flag on both sides.

For each layer: correctness first (relative error vs cuDNN's own output), then
triton.testing.do_bench medians after warm-up (and after fastconv's tile tuning).
Also measures the two ceilings every ratio is read against: a large device-to-device
copy (GB/s, bytes read + written) and a large matmul (TFLOP/s, bf16 and TF32).

    python benchmarks/triton_vs_cudnn.py --out DIR [--batch 32] [--suites a,b] [--quick]

Writes DIR/triton_vs_cudnn.csv, .log and .png, and prints a summary table last.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import fastconv
from fastconv.kernels.timing import cuda_graph_time

# (C, K, H, R, stride, groups): square images and kernels, padding R // 2 (as the tests).
SUITES = {
    "resnet50": [
        (3, 64, 224, 7, 2, 1),
        (64, 64, 56, 1, 1, 1), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 1),
        (256, 64, 56, 1, 1, 1), (256, 128, 56, 1, 1, 1), (128, 128, 56, 3, 2, 1),
        (128, 512, 28, 1, 1, 1), (256, 512, 56, 1, 2, 1), (512, 128, 28, 1, 1, 1),
        (128, 128, 28, 3, 1, 1), (512, 256, 28, 1, 1, 1), (256, 256, 28, 3, 2, 1),
        (256, 1024, 14, 1, 1, 1), (512, 1024, 28, 1, 2, 1), (1024, 256, 14, 1, 1, 1),
        (256, 256, 14, 3, 1, 1), (1024, 512, 14, 1, 1, 1), (512, 512, 14, 3, 2, 1),
        (512, 2048, 7, 1, 1, 1), (1024, 2048, 14, 1, 2, 1), (2048, 512, 7, 1, 1, 1),
        (512, 512, 7, 3, 1, 1),
    ],
    "resnext50_grouped": [
        (128, 128, 56, 3, 1, 32), (256, 256, 56, 3, 2, 32), (256, 256, 28, 3, 1, 32),
        (512, 512, 28, 3, 2, 32), (512, 512, 14, 3, 1, 32), (1024, 1024, 14, 3, 2, 32),
        (1024, 1024, 7, 3, 1, 32),
    ],
    "mobilenetv2_dw": [
        (32, 32, 112, 3, 1, 32), (96, 96, 112, 3, 2, 96), (144, 144, 56, 3, 1, 144),
        (144, 144, 56, 3, 2, 144), (192, 192, 28, 3, 1, 192), (192, 192, 28, 3, 2, 192),
        (384, 384, 14, 3, 1, 384), (576, 576, 14, 3, 1, 576), (576, 576, 14, 3, 2, 576),
        (960, 960, 7, 3, 1, 960),
    ],
    "convnext_t_dw": [(96, 96, 56, 7, 1, 96), (192, 192, 28, 7, 1, 192),
                      (384, 384, 14, 7, 1, 384), (768, 768, 7, 7, 1, 768)],
    "replknet31b_dw": [(128, 128, 56, 31, 1, 128), (256, 256, 28, 29, 1, 256),
                       (512, 512, 14, 27, 1, 512), (1024, 1024, 7, 13, 1, 1024)],
}
# Which (dtype, tf32, layout) variants each suite is timed in: the targets' variants.
VARIANTS = {
    "resnet50": [("bf16", False, "nhwc"), ("fp32", True, "nhwc")],
    "resnext50_grouped": [("bf16", False, "nhwc"), ("fp32", True, "nhwc")],
    "mobilenetv2_dw": [(d, False, l) for d in ("fp32", "bf16") for l in ("nchw", "nhwc")],
    "convnext_t_dw": [(d, False, l) for d in ("fp32", "bf16") for l in ("nchw", "nhwc")],
    "replknet31b_dw": [(d, True, l) for d in ("fp32", "bf16") for l in ("nchw", "nhwc")],
}
BACKWARD_SUITES = ("mobilenetv2_dw", "convnext_t_dw", "resnext50_grouped", "resnet50")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


def log(msg, fh):
    print(msg, flush=True)
    fh.write(msg + "\n")
    fh.flush()


def bench(fn, rep=60):
    """Eager time per call (us): includes each side's host overhead when it exceeds the
    GPU time (Python dispatch + Triton launch for fastconv, ATen + cuDNN for PyTorch)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep, return_mode="median") * 1e3


GRAPH_CALLS = 20


def graph_time(fn, reps=15):
    """GPU time per call (us): median over replays of a CUDA graph of GRAPH_CALLS calls,
    so host overhead is out of the number on both sides."""
    return cuda_graph_time(fn, calls=GRAPH_CALLS, reps=reps) * 1e3


def ceilings(fh):
    n = 1 << 28  # 1 GiB of fp32 each way
    a = torch.randn(n, device="cuda")
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a), rep=200)
    copy_gbs = 2 * a.numel() * 4 / (t * 1e-6) / 1e9
    del a, b
    out = {"copy_GBps": copy_gbs}
    m = 8192
    for name, dt, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x = torch.randn(m, m, device="cuda", dtype=dt)
        y = torch.randn(m, m, device="cuda", dtype=dt)
        t = bench(lambda: x @ y, rep=200)
        out[f"matmul_{name}_TFLOPs"] = 2 * m**3 / (t * 1e-6) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    log("ceilings: " + ", ".join(f"{k}={v:.1f}" for k, v in out.items()), fh)
    return out


def make_layer(layer, batch, dtype, cl):
    c, k, h, r, s, g = layer
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(batch, c, h, h, device="cuda").to(dtype).contiguous(memory_format=fmt)
    w = (torch.randn(k, c // g, r, r, device="cuda") / (c // g * r * r) ** 0.5).to(dtype)
    return x, w.contiguous(memory_format=fmt), dict(stride=s, padding=r // 2, groups=g)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run_case(suite, layer, batch, dname, tf32, lay, direction, fh, compile_only=False):
    dtype = DTYPES[dname]
    torch.backends.cudnn.allow_tf32 = tf32
    x, w, kw = make_layer(layer, batch, dtype, lay == "nhwc")
    spec = fastconv.conv_spec(x, w, None, kw["stride"], kw["padding"], 1, kw["groups"])[2]
    algo = fastconv.select(spec)
    row = dict(suite=suite, layer=spec.describe(), N=batch, dtype=dname, tf32=tf32, layout=lay,
               direction=direction, algo=algo.name)
    if direction == "fwd":
        ours = lambda: fastconv.conv2d(x, w, None, **kw)  # noqa: E731
        theirs = lambda: F.conv2d(x, w, None, **kw)  # noqa: E731
        if compile_only:
            ours()
            return None
        err = rel(ours(), theirs())
        nbytes = spec.min_bytes
        flops = spec.flops
    else:  # "gin" (grad_input) or "gw" (grad_weight), each against cuDNN's own kernel
        y = F.conv2d(x, w, None, **kw)
        dy = torch.randn_like(y)
        st, pad, g = [kw["stride"]] * 2, [kw["padding"]] * 4, kw["groups"]
        mask = [direction == "gin", direction == "gw", False]
        if direction == "gin":
            ours = lambda: algo.grad_input(dy, w, list(x.shape), st, pad, [1, 1], g)  # noqa: E731
        else:
            ours = lambda: algo.grad_weight(dy, x, list(w.shape), st, pad, [1, 1], g)  # noqa: E731

        def theirs():
            out = torch.ops.aten.convolution_backward(dy, x, w, None, st, pad[:2], [1, 1],
                                                      False, [0, 0], g, mask)
            return out[0] if direction == "gin" else out[1]
        if compile_only:
            ours()
            return None
        err = rel(ours(), theirs())
        # the forward's own minimum: two tensors read, one written, each once
        nbytes = spec.min_bytes
        flops = spec.flops
    if compile_only:  # warm Triton's cache (FASTCONV_TUNE=compile): no timing
        return None
    t_ours = graph_time(ours)
    t_theirs = graph_time(theirs)
    e_ours = bench(ours)
    e_theirs = bench(theirs)
    tol = TOL[dname] if not (dname == "fp32" and tf32) else 5e-3
    row.update(us_fastconv=round(t_ours, 2), us_cudnn=round(t_theirs, 2),
               speedup=round(t_theirs / t_ours, 3), rel_err=f"{err:.2e}", ok=err < tol,
               us_fastconv_eager=round(e_ours, 2), us_cudnn_eager=round(e_theirs, 2),
               speedup_eager=round(e_theirs / e_ours, 3),
               GBps_fastconv=round(nbytes / (t_ours * 1e-6) / 1e9, 1),
               TFLOPs_fastconv=round(flops / (t_ours * 1e-6) / 1e12, 2))
    return row


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def summarize(rows, ceil, fh):
    groups = {}
    for r in rows:
        key = (r["suite"], r["direction"], r["dtype"] + ("-tf32" if r["tf32"] and r["dtype"] == "fp32" else ""),
               r["layout"])
        groups.setdefault(key, []).append(r)
    log("\n== summary: speedup = cuDNN time / fastconv time, geomean per group; GPU time from "
        "CUDA-graph replays (eager = per-call time with host overhead) ==", fh)
    log(f"{'suite':20s} {'dir':4s} {'dtype':9s} {'layout':6s} {'n':>3s} {'geomean':>8s} "
        f"{'min':>6s} {'max':>6s} {'eager':>6s} {'%copyBW':>8s} {'ok':>3s}", fh)
    for key, rs in sorted(groups.items()):
        sp = [r["speedup"] for r in rs]
        bw = geomean([r["GBps_fastconv"] for r in rs]) / ceil["copy_GBps"] * 100
        eager = geomean([r["speedup_eager"] for r in rs])
        log(f"{key[0]:20s} {key[1]:4s} {key[2]:9s} {key[3]:6s} {len(rs):3d} {geomean(sp):8.2f} "
            f"{min(sp):6.2f} {max(sp):6.2f} {eager:6.2f} {bw:7.0f}% "
            f"{'yes' if all(r['ok'] for r in rs) else 'NO':>3s}", fh)
    dw = [r["speedup"] for r in rows if r["suite"] in ("mobilenetv2_dw", "convnext_t_dw")
          and r["direction"] == "fwd"]
    if dw:
        log(f"depthwise 3x3/7x7 forward, all variants: geomean {geomean(dw):.2f}x", fh)
    bwd = [r["speedup"] for r in rows if r["suite"] in ("mobilenetv2_dw", "convnext_t_dw")
           and r["direction"] in ("gin", "gw")]
    if bwd:
        log(f"depthwise grad_input and grad_weight, all variants: geomean {geomean(bwd):.2f}x", fh)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['suite'][:10]} {r['layer'].split(' g=')[0][:28]} {r['dtype']}{'t' if r['tf32'] else ''} "
              f"{r['layout']} {r['direction']}" for r in rows]
    sp = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(4, 0.16 * len(rows))))
    ax.barh(range(len(rows)), sp, color=["tab:green" if s >= 1 else "tab:red" for s in sp])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=5)
    ax.set_xscale("log")
    ax.set_xlabel("speedup over cuDNN (cuDNN time / fastconv time)")
    ax.set_title(f"fastconv Triton vs cuDNN on {torch.cuda.get_device_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_out")
    p.add_argument("--batch", type=int, default=32)
    # Depthwise first: the largest expected wins, and what a time budget should not cut.
    p.add_argument("--suites", default="mobilenetv2_dw,convnext_t_dw,replknet31b_dw,"
                   "resnext50_grouped,resnet50")
    p.add_argument("--layers", type=int, default=0, help="at most this many layers per suite")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--backward-suites", default=",".join(BACKWARD_SUITES),
                   help="suites whose grad_input and grad_weight are timed too")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new cases after this")
    p.add_argument("--compile-only", action="store_true",
                   help="only run each case once (warms Triton's cache): every tile candidate "
                   "(FASTCONV_TUNE=compile, the default) or the heuristic's")
    p.add_argument("--shard", default="0/1", help="i/n: this process takes every n-th case")
    args = p.parse_args(argv)
    shard, nshards = map(int, args.shard.split("/"))
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    if args.compile_only:  # every candidate, or only what FASTCONV_TUNE=heuristic runs
        os.environ.setdefault("FASTCONV_TUNE", "compile")
        fh = open(os.devnull, "w")
    else:
        # Tuned kernels against cuDNN: race each new shape's tiles (fastconv's default
        # is the untimed heuristic), unless FASTCONV_TUNE says otherwise.
        os.environ.setdefault("FASTCONV_TUNE", "race")
        fh = open(os.path.join(args.out, "triton_vs_cudnn.log"), "w")
    import triton

    log(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton "
        f"{triton.__version__}  cudnn {torch.backends.cudnn.version()}  batch {args.batch}", fh)
    ceil = ceilings(fh) if not args.compile_only else {}
    rows = []
    t0 = time.time()
    cases = []
    for suite in args.suites.split(","):
        for layer in SUITES[suite][:args.layers or None]:
            for dname, tf32, lay in VARIANTS[suite]:
                cases.append((suite, layer, dname, tf32, lay, "fwd"))
                if suite in args.backward_suites.split(",") and not args.no_backward:
                    cases.append((suite, layer, dname, tf32, lay, "gin"))
                    cases.append((suite, layer, dname, tf32, lay, "gw"))
    cases = cases[shard::nshards]
    if args.compile_only:
        for case in cases:
            try:
                run_case(case[0], case[1], args.batch, *case[2:], fh, compile_only=True)
            except Exception as e:
                print(f"compile-only {case}: {type(e).__name__}: {e}", flush=True)
            torch.cuda.empty_cache()
        return 0
    for case in cases:
        if time.time() - t0 > args.budget_s:
            log(f"budget reached: skipped {len(cases) - len(rows)} cases", fh)
            break
        try:
            row = run_case(case[0], case[1], args.batch, *case[2:], fh)
        except Exception as e:  # keep timing the rest; the log says what broke
            log(f"FAILED {case}: {type(e).__name__}: {e}", fh)
            traceback.print_exc(file=fh)
            continue
        rows.append(row)
        log(f"{row['suite']:18s} {row['layer']:52s} {row['dtype']}{'+tf32' if row['tf32'] and row['dtype'] == 'fp32' else '':5s} "
            f"{row['layout']} {row['direction']} {row['algo']:16s} ours {row['us_fastconv']:9.1f}us "
            f"cudnn {row['us_cudnn']:9.1f}us x{row['speedup']:.2f} (eager x{row['speedup_eager']:.2f}) "
            f"{row['GBps_fastconv']:7.0f}GB/s "
            f"{row['TFLOPs_fastconv']:6.1f}TF err {row['rel_err']}", fh)
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, "triton_vs_cudnn.csv"), "w", newline="") as f:
        if rows:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]) + list(ceil))
            wr.writeheader()
            for r in rows:
                wr.writerow({**r, **{k: round(v, 1) for k, v in ceil.items()}})
    plot(rows, os.path.join(args.out, "triton_vs_cudnn.png"))
    summarize(rows, ceil, fh)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
