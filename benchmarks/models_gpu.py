"""Whole models on fastconv vs torch (cuDNN): convert, check outputs, time.

    python benchmarks/models_gpu.py --out results/models            # on the GPU machine
    python benchmarks/models_gpu.py --dry-run --out /tmp/models     # CPU, tiny models

For each torchvision model (random weights; nothing is downloaded) and each precision:
  tf32     float32 tensors, TF32 allowed in cuDNN and matmul (both sides), NCHW
  bf16_cl  bfloat16 parameters and input, channels_last
  fp32     (opt-in) strict float32, TF32 off
it converts a copy with fastconv.convert (layers fastconv cannot run stay torch's, as
the report lists), checks eval outputs against the unconverted model, and times
  forward        eval, no_grad
  forward_fused  fastconv.fuse'd copy (BN folded, activations in the epilogue) vs the
                 unconverted eval model
  train_step     forward + backward + SGD step in train mode
  forward_graph, train_step_graph
                 the same, captured once in a CUDA graph and replayed: no host work, so
                 these rows compare the GPU work alone (kernels, not launch overhead)
with triton.testing.do_bench (medians; CUDA events when triton is missing) and
torch.backends.cudnn.benchmark on. Writes
models.csv and models.md (with the per-model list of skipped layers) to --out.
Failures of one configuration are recorded in the table and the run goes on; the
files are rewritten after every configuration, so a run cut short keeps its rows.
On the H200 one full run (4 models x 2 precisions x 3 modes, --reps 5) takes over
7 minutes, most of it Triton autotuning: split it with --models if a limit applies.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch import nn

# Run from a checkout too (python benchmarks/models_gpu.py), not only when installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
import fastconv  # noqa: E402

MODELS = ["resnet50", "mobilenet_v2", "convnext_tiny", "efficientnet_b0"]
PRECISIONS = ["tf32", "bf16_cl"]
MODES = ["forward", "forward_fused", "train_step", "forward_graph", "train_step_graph"]
COLUMNS = ["model", "precision", "mode", "batch", "image", "device", "fastconv_ms", "torch_ms",
           "speedup", "max_abs_err", "rel_err", "swapped", "skipped", "status"]
# Relative output error (max |fast - torch| / max |torch|) above which a row says "MISMATCH".
REL_TOL = {"fp32": 1e-4, "tf32": 2e-2, "bf16_cl": 1e-1}


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------

def tiny_models():
    """Small stand-ins for --dry-run (CPU, no torchvision needed)."""

    def cba(cin, cout, k, s=1, g=1, act=nn.ReLU):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False),
                             nn.BatchNorm2d(cout), act())

    class TinyResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cba(3, 8, 3, 2)
            self.body = nn.Sequential(cba(8, 16, 3, 2), nn.Conv2d(16, 16, 3, padding=1),
                                      nn.BatchNorm2d(16))
            self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stem(x)
            x = F.relu(self.body(x) + self.down(x))
            return self.fc(x.mean((2, 3)))

    tiny_mobilenet = nn.Sequential(
        cba(3, 8, 3, 2, act=nn.ReLU6), cba(8, 8, 3, 1, g=8, act=nn.ReLU6), cba(8, 16, 1),
        cba(16, 16, 5, 2, g=16, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10))
    return {"tiny_resnet": TinyResNet, "tiny_mobilenet": lambda: tiny_mobilenet}


def build(name: str, dry_run: bool) -> nn.Module:
    if dry_run:
        return tiny_models()[name]()
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=1000)


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------

def bench_ms(fn, device: str, reps: int) -> float:
    """Median milliseconds of fn()."""
    if device == "cuda":
        try:
            import triton.testing

            rep_ms = max(reps * 10, 100)
            try:
                return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms,
                                                     return_mode="median"))
            except TypeError:  # older triton: no return_mode
                return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms,
                                                     quantiles=[0.5])[0])
        except ImportError:
            pass
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def set_precision(precision: str) -> None:
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def prepare(model: nn.Module, precision: str, device: str) -> nn.Module:
    model = model.to(device)
    if precision == "bf16_cl":
        model = model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    return model


def make_input(batch, image, precision, device):
    x = torch.randn(batch, 3, image, image, device=device)
    if precision == "bf16_cl":
        x = x.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    return x


def forward_fn(model, x):
    def fn():
        with torch.no_grad():
            return model(x)
    return fn


def train_fn(model, x, classes=1000):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.randint(0, classes, (x.shape[0],), device=x.device)

    def fn():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).float(), target).backward()
        opt.step()
    return fn


def graphed(fn):
    """fn captured in a CUDA graph after a warm-up on a side stream (plans tuned, Triton
    kernels compiled, cuDNN algorithms chosen); returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def compare(fast_out, ref_out):
    diff = (fast_out.float() - ref_out.float()).abs().max().item()
    scale = ref_out.float().abs().max().item()
    return diff, diff / max(scale, 1e-30)


# ---------------------------------------------------------------------------------------
# one model x precision
# ---------------------------------------------------------------------------------------

def run_config(name, precision, args, device, skipped_layers):
    rows = []
    base = dict(model=name, precision=precision, batch=args.batch, image=args.image,
                device=device)
    set_precision(precision)
    torch.manual_seed(0)
    try:
        ref = prepare(build(name, args.dry_run), precision, device)
        fast = fastconv.convert(ref)
        rep = fast.fastconv_report
        base.update(swapped=len(rep.swapped), skipped=len(rep.skipped))
        skipped_layers[(name, precision)] = list(rep.skipped)
        x = make_input(args.batch, args.image, precision, device)
        ref.eval()
        fast.eval()
        with torch.no_grad():
            err = compare(fast(x), ref(x))
    except Exception as e:  # record and go on: one broken model must not end the run
        traceback.print_exc()
        return [dict(base, mode="convert", status=f"error: {type(e).__name__}: {e}"[:200])]

    for mode in args.modes:
        row = dict(base, mode=mode)
        try:
            if mode in ("forward", "forward_graph"):
                a, b = fast, ref
                row["max_abs_err"], row["rel_err"] = err
                fa, fb = forward_fn(a, x), forward_fn(b, x)
            elif mode == "forward_fused":
                a, b = fastconv.fuse(fast), ref
                with torch.no_grad():
                    row["max_abs_err"], row["rel_err"] = compare(a(x), b(x))
                fa, fb = forward_fn(a, x), forward_fn(b, x)
            else:
                a, b = copy.deepcopy(fast).train(), copy.deepcopy(ref).train()
                row["max_abs_err"], row["rel_err"] = err
                classes = 10 if args.dry_run else 1000
                fa, fb = train_fn(a, x, classes), train_fn(b, x, classes)
            if mode.endswith("_graph"):
                if device != "cuda":
                    row["status"] = "skipped: CUDA graphs need a GPU"
                    rows.append(row)
                    continue
                fa, fb = graphed(fa), graphed(fb)
            row["fastconv_ms"] = bench_ms(fa, device, args.reps)
            row["torch_ms"] = bench_ms(fb, device, args.reps)
            row["speedup"] = row["torch_ms"] / row["fastconv_ms"]
            row["status"] = "ok" if row["rel_err"] <= REL_TOL[precision] else "MISMATCH"
        except Exception as e:
            traceback.print_exc()
            row["status"] = f"error: {type(e).__name__}: {e}"[:200]
        rows.append(row)
        print(format_row(row), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_row(r):
    def f(k, fmt):
        return format(r[k], fmt) if isinstance(r.get(k), (int, float)) else str(r.get(k, ""))
    return (f"{r['model']:16s} {r['precision']:8s} {r['mode']:14s} fastconv {f('fastconv_ms', '8.3f')} ms"
            f"  torch {f('torch_ms', '8.3f')} ms  x{f('speedup', '.2f')}  rel_err {f('rel_err', '.1e')}"
            f"  {r.get('status', '')}")


def write_outputs(rows, skipped_layers, out_dir, args, device):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "models.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()
                        if k in COLUMNS})
    dev = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [f"# Models: fastconv vs torch ({dev}, batch {args.batch}, {args.image}x{args.image})",
             "",
             "Medians; speedup = torch / fastconv (> 1: fastconv faster). rel_err = max |fastconv -"
             " torch| / max |torch| on eval outputs. Layers fastconv cannot run stay torch's "
             "(`skipped`).", "",
             "| model | precision | mode | fastconv ms | torch ms | speedup | rel err | swapped "
             "| skipped | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]

    def cell(r, k, fmt):
        v = r.get(k)
        return format(v, fmt) if isinstance(v, (int, float)) else ("" if v is None else str(v))

    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['mode']} | {cell(r, 'fastconv_ms', '.3f')} "
                     f"| {cell(r, 'torch_ms', '.3f')} | {cell(r, 'speedup', '.2f')} "
                     f"| {cell(r, 'rel_err', '.1e')} | {cell(r, 'swapped', 'd')} "
                     f"| {cell(r, 'skipped', 'd')} | {cell(r, 'status', 's')} |")
    listed = [(k, v) for k, v in skipped_layers.items() if v]
    if listed:
        lines += ["", "## Layers left to torch", ""]
        for (model, precision), skipped in listed:
            lines.append(f"- **{model}** ({precision}): {len(skipped)} layers")
            for layer, reason in skipped[:20]:
                lines.append(f"  - `{layer}`: {reason}")
            if len(skipped) > 20:
                lines.append(f"  - ... {len(skipped) - 20} more")
    with open(os.path.join(out_dir, "models.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for models.csv and models.md")
    p.add_argument("--models", default=None, help=f"comma list (default {','.join(MODELS)})")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="comma list of tf32, bf16_cl, fp32")
    p.add_argument("--modes", default=None,
                   help=f"comma list of {', '.join(MODES)} (default all; no _graph ones dry)")
    p.add_argument("--batch", type=int, default=None, help="default 32 (2 with --dry-run)")
    p.add_argument("--image", type=int, default=None, help="default 224 (32 with --dry-run)")
    p.add_argument("--reps", type=int, default=None, help="timing repeats (default 20; 3 dry)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny built-in models: checks the pipeline, not the speed")
    args = p.parse_args(argv)
    # Steady-state speed with tuned tiles: race each new shape's tiles (fastconv's default
    # is the untimed heuristic), unless FASTCONV_TUNE says otherwise.
    os.environ.setdefault("FASTCONV_TUNE", "race")
    dry = args.dry_run
    args.batch = args.batch or (2 if dry else 32)
    args.image = args.image or (32 if dry else 224)
    args.reps = args.reps or (3 if dry else 20)
    args.modes = args.modes.split(",") if args.modes else [
        m for m in MODES if not (dry and m.endswith("_graph"))]
    precisions = args.precisions.split(",")
    for prec in precisions:
        if prec not in REL_TOL:
            p.error(f"unknown precision {prec!r}; expected one of {', '.join(REL_TOL)}")
    for mode in args.modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    models = args.models.split(",") if args.models else (list(tiny_models()) if dry else MODELS)
    if dry:
        device = "cpu"
        precisions = [pr for pr in precisions if pr != "fp32"] or ["tf32"]
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device; use --dry-run to check the pipeline on the CPU")
        device = "cuda"
        torch.backends.cudnn.benchmark = True  # the strongest cuDNN baseline
    rows, skipped_layers = [], {}
    for name in models:
        for prec in precisions:
            rows += run_config(name, prec, args, device, skipped_layers)
            # After every configuration, so a run cut short keeps what it measured.
            write_outputs(rows, skipped_layers, args.out, args, device)
    print(f"wrote {os.path.join(args.out, 'models.csv')} and models.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
