"""A model's first training step on a fresh machine: fastconv-converted vs cuDNN.

    python benchmarks/first_step.py --out results/first_step            # on the GPU machine
    python benchmarks/first_step.py --dry-run --out /tmp/first_step     # CPU, interpreter

The first call of each new conv shape makes a plan: a tile (tuned, shipped, or the
heuristic's; fastconv.settings.tune) and a Triton compile. The target: a converted
model's first step takes at most 10 s more than the unconverted model's first step with
cudnn.benchmark on (which tunes cuDNN's algorithms on first sight too).

For each torchvision model (random weights; nothing is downloaded) and precision (tf32:
float32 NCHW with TF32; bf16_cl: bfloat16 channels_last), each side -- "torch" (the model
as built) and "fastconv" (fastconv.convert of it) -- runs in its own subprocess with an
empty FASTCONV_CACHE_DIR and TRITON_CACHE_DIR, as on a fresh machine, and times
  first_s   the first training step (forward + backward + SGD, batch 32), synchronized
  second_s  the second one
plus, for fastconv, the plans its first step made, those slower than the first-sight
notice threshold, and where their tiles came from. Writes first_step.csv and
first_step.md to --out (rewritten after every row).

--compile-ahead times fastconv.settings.compile_ahead (gradients compiled in background
threads from the forward's first sight on). --tune race --tiles-cache DIR keeps the races' winners in DIR/triton_tiles.json for
`python -m fastconv tiles export` (the tiles shipped per GPU). --dry-run: tiny models on
the CPU under TRITON_INTERPRET=1, with the Triton algorithms preferred: it checks the
pipeline, not the speed.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
MODELS = ["resnet50", "mobilenet_v2", "convnext_tiny", "efficientnet_b0"]
PRECISIONS = ["bf16_cl", "tf32"]
SIDES = ["torch", "fastconv"]
COLUMNS = ["model", "precision", "side", "batch", "image", "tune", "compile_ahead", "first_s",
           "second_s",
           "extra_first_s", "plans", "slow_plans", "slow_plan_s", "tile_sources",
           "ahead_compiles", "status"]
BUDGET_S = 10.0  # target: fastconv's first step at most this much longer than cuDNN's
RESULT = "FIRST_STEP_RESULT "  # the child's result line


def child(args) -> dict:
    """One side of one model and precision, in this (fresh) process."""
    for path in (_ROOT, _HERE):
        if path not in sys.path:
            sys.path.insert(0, path)
    import torch

    import fastconv
    from models_gpu import build, make_input, prepare, set_precision, train_fn

    device = "cpu" if args.dry_run else "cuda"
    torch.backends.cudnn.benchmark = True
    set_precision(args.precision)
    torch.manual_seed(0)
    model = prepare(build(args.model, args.dry_run), args.precision, device)
    if args.side == "fastconv":
        if args.dry_run:  # CPU tensors: make auto take the Triton kernels (interpreted)
            fastconv.settings.algorithms = ("triton_depthwise", "triton_grouped", "triton_igemm")
        model = fastconv.convert(model, inplace=True)
    model.train()
    x = make_input(args.batch, args.image, args.precision, device)
    step = train_fn(model, x, 10 if args.dry_run else 1000)

    def timed():
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    first = timed()
    second = timed()
    out = dict(first_s=first, second_s=second)
    if args.side == "fastconv" and "fastconv.kernels._plan" in sys.modules:
        from fastconv.kernels import _plan

        stats = _plan.first_sight_stats()
        sources = collections.Counter(_plan.tile_sources().values())
        out.update(plans=stats["plans"], slow_plans=stats["slow"],
                   slow_plan_s=stats["slow_seconds"],
                   tile_sources=" ".join(f"{k}:{v}" for k, v in sorted(sources.items())),
                   ahead_compiles="{done} done, {failed} failed".format(**_plan.ahead_stats()))
    return out


def run_side(model, precision, side, args) -> dict:
    """The child process of one side, with fresh caches (or --tiles-cache)."""
    fast = side == "fastconv"
    row = dict(model=model, precision=precision, side=side, batch=args.batch, image=args.image,
               tune=args.tune if fast else "", compile_ahead=args.compile_ahead if fast else "")
    with tempfile.TemporaryDirectory(prefix="first_step_") as tmp:
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(tmp, "triton"),
                   FASTCONV_CACHE_DIR=args.tiles_cache or os.path.join(tmp, "fastconv"),
                   FASTCONV_TUNE=args.tune, PYTHONUNBUFFERED="1",
                   FASTCONV_COMPILE_AHEAD="1" if args.compile_ahead else "0")
        if args.dry_run:
            env["TRITON_INTERPRET"] = "1"
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", model,
               "--precision", precision, "--side", side, "--batch", str(args.batch),
               "--image", str(args.image)] + (["--dry-run"] if args.dry_run else [])
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return dict(row, status=f"timeout after {args.timeout} s")
    # The child's stderr carries fastconv's first-sight notices: pass them on.
    sys.stderr.write(proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(row, status=f"error (exit {proc.returncode}): {tail}"[:200])
    return dict(row, status="ok", **json.loads(lines[-1][len(RESULT):]))


def write(rows, out_dir, args) -> None:
    with open(os.path.join(out_dir, "first_step.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"# First training step, fresh caches (batch {args.batch}, image {args.image}, "
             f"fastconv tune={args.tune}, compile_ahead={args.compile_ahead})", "",
             f"Target: fastconv's first step at most {BUDGET_S:.0f} s more than "
             "torch's (cudnn.benchmark on).", "",
             "| model | precision | torch first s | fastconv first s | extra s | torch second s "
             "| fastconv second s | plans (slow) | tiles | within target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["precision"], r["side"]): r for r in rows}
    for (model, precision, side), r in by.items():
        if side != "fastconv":
            continue
        t = by.get((model, precision, "torch"), {})

        def f(row, k):
            v = row.get(k)
            return f"{v:.2f}" if isinstance(v, float) else str(v if v is not None else "")
        extra = r.get("extra_first_s")
        ok = ("yes" if isinstance(extra, float) and extra <= BUDGET_S else
              "no" if isinstance(extra, float) else r.get("status", ""))
        lines.append(f"| {model} | {precision} | {f(t, 'first_s')} | {f(r, 'first_s')} | "
                     f"{f(r, 'extra_first_s')} | {f(t, 'second_s')} | {f(r, 'second_s')} | "
                     f"{r.get('plans', '')} ({r.get('slow_plans', '')}) | "
                     f"{r.get('tile_sources', '')} | {ok} |")
    with open(os.path.join(out_dir, "first_step.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="directory for first_step.csv and first_step.md")
    p.add_argument("--models", default=None, help=f"comma list (default {','.join(MODELS)})")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of bf16_cl, tf32")
    p.add_argument("--batch", type=int, default=None, help="default 32 (2 with --dry-run)")
    p.add_argument("--image", type=int, default=None, help="default 224 (16 with --dry-run)")
    p.add_argument("--tune", default="heuristic", choices=("heuristic", "race", "compile"),
                   help="fastconv.settings.tune for the fastconv side (default heuristic)")
    p.add_argument("--compile-ahead", action="store_true",
                   help="fastconv.settings.compile_ahead: a forward's first sight compiles its "
                        "gradients' kernels in background threads")
    p.add_argument("--tiles-cache", default=None,
                   help="a FASTCONV_CACHE_DIR kept across models (default: a fresh one each)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per child process")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny built-in models, Triton's interpreter")
    # the child process's own arguments
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--side", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dry = args.dry_run
    args.batch = args.batch or (2 if dry else 32)
    args.image = args.image or (16 if dry else 224)
    if args.child:
        print(RESULT + json.dumps(child(args)), flush=True)
        return 0
    if not args.out:
        p.error("--out is required")
    if args.tiles_cache:
        args.tiles_cache = os.path.abspath(args.tiles_cache)
    sys.path.insert(0, _HERE)
    from models_gpu import tiny_models

    models = args.models.split(",") if args.models else (list(tiny_models()) if dry else MODELS)
    precisions = args.precisions.split(",")
    for prec in precisions:
        if prec not in PRECISIONS:
            p.error(f"unknown precision {prec!r}; expected one of {', '.join(PRECISIONS)}")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for model in models:
        for precision in precisions:
            for side in SIDES:
                row = run_side(model, precision, side, args)
                if side == "fastconv":
                    base = next((r for r in rows if r["model"] == model
                                 and r["precision"] == precision and r["side"] == "torch"), {})
                    if isinstance(row.get("first_s"), float) and isinstance(
                            base.get("first_s"), float):
                        row["extra_first_s"] = row["first_s"] - base["first_s"]
                rows.append(row)
                shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                         if k in ("first_s", "second_s", "extra_first_s", "plans", "slow_plans",
                                  "tile_sources", "ahead_compiles", "status")}
                print(f"{model:16s} {precision:8s} {side:9s} {shown}", flush=True)
                write(rows, args.out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
