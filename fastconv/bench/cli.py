"""`fastconv bench`: time fastconv's algorithms against PyTorch on real networks' conv layers.

Every row is measured in one run: each applicable fastconv algorithm (from the registry), PyTorch's
F.conv2d (cuDNN / oneDNN / slow_conv2d, named), the equivalent GEMM through torch.mm (bmm over
groups), F.unfold + matmul, and (conv_vs_linear) nn.Linear. Writes results.csv and
results.json (one row per layer, pass and algorithm, the run's metadata as columns), run.json
(flags, measured ceilings, warnings), summary.md, speedup.png, roofline.png and, when the
conv_vs_linear suite ran, conv_vs_linear.png to --out.

On the CPU the default thread count is torch's, capped by the CPUs the load average leaves
idle, and every row is checked for oversubscription (threads slower than one thread), noise
and load; a failing layer is measured again, and what still fails is flagged loudly in the
console, summary.md, results (`warning`, `oversubscribed`) and the plots.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import report, tables

DTYPES = ("float32", "float64", "float16", "bfloat16")


def add_parser(sub):
    p = sub.add_parser("bench", help="time fastconv against PyTorch on real layer tables",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--suite", nargs="+", default=["all"], choices=(*tables.SUITES, "all"),
                   metavar="SUITE", help=f"one or more of {', '.join(tables.SUITES)}, all (default: all)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size for every layer (default: the table's N, else 1 on cpu / 32 on cuda)")
    p.add_argument("--algo", nargs="+", default=None, metavar="ALGO",
                   help="registered algorithm names, or auto (the algorithm fastconv.conv2d's "
                        "algo='auto' picks per layer) (default: every applicable public algorithm)")
    p.add_argument("--backward", action="store_true",
                   help="also time forward+backward (rows with pass 'fwd+bwd' beside the 'fwd' rows)")
    p.add_argument("--quick", action="store_true",
                   help="representative subset of each table, shorter measurements (sums over the "
                        "timed layers are then labelled as a subset, not the network)")
    p.add_argument("--repeats", type=int, default=None,
                   help="minimum timed samples per measurement (default 5, --quick 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (fixed for the whole run and recorded; default: torch's, "
                        "capped by the CPUs the load average leaves idle)")
    p.add_argument("--tf32", choices=("on", "off"), default="on",
                   help="CUDA float32: allow TF32 in cuBLAS/cuDNN, as Triton's tl.dot does by default")
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out/)")
    p.add_argument("--copy-mib", type=int, default=None,
                   help="size of the copy-bandwidth ceiling's tensor (default: twice the last-level cache)")
    p.add_argument("--replot", metavar="DIR", default=None,
                   help="time nothing: rewrite DIR's PNGs and summary.md from DIR/results.json")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--system-malloc", action="store_true",
                   help="CPU: leave glibc's malloc as it is (by default freed pages are kept, as "
                        "jemalloc/tcmalloc do, so large outputs do not page-fault on every call)")
    p.set_defaults(func=run)
    return p


def options_from_args(args):
    import torch

    from .runner import Options

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastconv bench: --device cuda but torch.cuda.is_available() is False")
    dtype = getattr(torch, args.dtype)
    if device == "cpu" and dtype in (torch.float16, torch.bfloat16):
        raise SystemExit(f"fastconv bench: dtype {args.dtype} is not supported on cpu (float32, float64)")
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"fastconv bench: --batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"fastconv bench: --threads must be >= 1, got {args.threads}")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if repeats < 1:
        raise SystemExit(f"fastconv bench: --repeats must be >= 1, got {repeats}")
    if args.algo is not None:
        from .. import registry

        for name in args.algo:
            if name == "auto":
                continue
            try:
                registry.get(name)
            except ValueError as e:
                raise SystemExit(f"fastconv bench: {e}")
    return Options(device=device, suites=args.suite, dtype=dtype, layout=args.layout, batch=args.batch,
                   algos=args.algo, backward=args.backward, quick=args.quick, repeats=repeats,
                   threads=args.threads, tf32=args.tf32 == "on", copy_mib=args.copy_mib)


def output_dir(path: str, command: str = "fastconv bench") -> str:
    """Create `path` as a directory; a clean error when it is a file or cannot be made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"{command}: --out {path} is an existing file; give a directory "
                         "(it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"{command}: cannot create the output directory {path}: {e.strerror or e}")
    return path


def print_warnings(result) -> None:
    """The run's warnings, loudly, after the summary table (and on the terminal when stdout
    goes to a file)."""
    lines = report.warning_lines(result)
    if not lines:
        return
    bar = "!" * 78
    text = "\n".join([bar, *(f"!! {ln}" for ln in lines), bar])
    print(text, flush=True)
    if not sys.stdout.isatty() and sys.stderr.isatty():  # stdout goes to a file: tell the terminal too
        print(text, file=sys.stderr, flush=True)


def run(args) -> int:
    import fastconv  # noqa: F401  (registers the algorithms)

    from . import machine, plots, runner

    if args.replot is not None:
        if not os.path.isfile(os.path.join(args.replot, "results.json")):
            raise SystemExit(f"fastconv bench: --replot {args.replot}: no results.json there")
        result = report.load_json(os.path.join(args.replot, "results.json"))
        names = plots.write_all(result.rows, result.header, args.replot)
        report.write_summary(result, os.path.join(args.replot, "summary.md"), names)
        print(f"wrote {', '.join(['summary.md', *names])} to {args.replot}/")
        return 0
    opts = options_from_args(args)
    output_dir(args.out)
    if opts.device == "cpu" and not args.system_malloc:
        machine.keep_freed_pages()
    print("fastconv bench: measuring this machine's ceilings...", file=sys.stderr)

    printed = []

    def on_row(row, bar):
        if not printed:
            bar.write(report.terminal_header())
            printed.append(True)
        bar.write(report.terminal_line(row))
        sys.stdout.flush()  # rows appear as they finish, also when stdout is a log file

    def on_header(header):
        print("\n".join(machine.header_lines(header)), flush=True)

    result = runner.run(opts, on_row=on_row, on_header=on_header)
    print(report.terminal_summary(result.rows))
    if "stability" in result.header:
        print(machine.header_lines(result.header)[-1])
    print_warnings(result)
    bad = [r for r in result.rows if not r["ok"]]
    for r in bad:
        print(f"WARNING: {r['algo']} on {r['suite']}/{r['layer']}: max relative error "
              f"{r['max_rel_err']:.3g} vs F.conv2d in float64", file=sys.stderr)

    report.write_csv(result.rows, os.path.join(args.out, "results.csv"), result.header)
    report.write_json(result, os.path.join(args.out, "results.json"))
    names = [] if args.no_plots else plots.write_all(result.rows, result.header, args.out)
    report.write_summary(result, os.path.join(args.out, "summary.md"), names)
    print(f"wrote {', '.join(['results.csv', 'results.json', 'run.json', 'summary.md', *names])} "
          f"to {args.out}/")
    return 1 if bad else 0
