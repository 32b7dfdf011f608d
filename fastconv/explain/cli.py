"""`fastconv explain`: where a convolution's bytes come from, per algorithm.

    fastconv explain --input 1,64,56,56 --weight 64,64,3,3 --padding 1 --simulate --measure
    fastconv explain --layer resnet50:conv2_x --json
    fastconv explain --layer resnet50:layer1.0.conv2 --out explain-out
    fastconv explain --vs-linear

--layer SUITE:NAME takes a layer of `fastconv bench`'s tables (suites: resnet50, mobilenetv2,
convnext_t, replknet, resnext, conv_vs_linear) by its table name (resnet50:layer1_3x3_64), its
torchvision module path (resnet50:layer1.0.conv2, mobilenetv2:features.2.conv.1.0,
convnext_t:features.1.0.block.0) or, for the ResNets, its stage in He et al.'s Table 1
(resnet50:conv1, resnet50:conv2_x ... conv5_x: the stage's stride-1 3x3 conv).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def _ints(text: str, n: int, what: str) -> tuple:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated integers, got {text!r}")
    if len(vals) != n or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{what} must be {n} positive comma-separated integers, got {text!r}")
    return vals


def _pair_or_quad(text: str, what: str, allow_zero: bool) -> tuple:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be integers, got {text!r}")
    if any(v < 0 or (v == 0 and not allow_zero) for v in vals):
        raise argparse.ArgumentTypeError(f"{what} must be {'non-negative' if allow_zero else 'positive'}: {text!r}")
    if len(vals) == 1:
        return vals * 2
    if len(vals) in (2, 4):
        return vals
    raise argparse.ArgumentTypeError(f"{what} takes 1, 2 (or for padding 4) integers, got {text!r}")


def add_parser(subparsers):
    p = subparsers.add_parser("explain", help="bytes per memory level, roofline and cache simulation per algorithm",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="N,C,H,W")
    p.add_argument("--weight", help="K,C/g,R,S")
    p.add_argument("--layer", help="SUITE:NAME, a layer of the bench tables by table name, torchvision "
                                   "module path or ResNet stage (see above; instead of --input/--weight)")
    p.add_argument("--stride", default="1")
    p.add_argument("--padding", default="0", help="p, ph,pw or top,bottom,left,right")
    p.add_argument("--dilation", default="1")
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--algo", action="append", help="algorithm(s) to explain (default: every applicable one)")
    p.add_argument("--simulate", action="store_true", help="replay the loop nests through the cache simulator")
    p.add_argument("--sample", type=int, default=None,
                   help="accesses counted by the simulator before it samples (default 20M)")
    p.add_argument("--measure", action="store_true", help="time each algorithm (median, torch.utils.benchmark)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--quick", action="store_true", help="quick (rougher) ceilings and shorter timings")
    p.add_argument("--out", help="directory for the pictures (PNG)")
    p.add_argument("--vs-linear", action="store_true",
                   help="why is a conv slower than a Linear layer of the same input size?")
    p.add_argument("--batch", default="1", help="with --vs-linear: batch sizes, comma-separated")
    p.set_defaults(func=run)
    return p


def spec_from_args(args):
    from ..spec import ConvSpec

    dtype = getattr(torch, args.dtype)
    if args.layer:
        if args.input or args.weight:
            raise SystemExit("fastconv explain: give either --layer or --input/--weight, not both")
        spec = layer_spec(args.layer)
        return spec.with_(dtype=dtype, layout=args.layout, device=args.device)
    if not (args.input and args.weight):
        raise SystemExit("fastconv explain: give --input N,C,H,W and --weight K,C/g,R,S (or --layer, or --vs-linear)")
    try:
        n, c, h, w = _ints(args.input, 4, "--input")
        k, cg, r, s = _ints(args.weight, 4, "--weight")
        stride = _pair_or_quad(args.stride, "--stride", False)
        dilation = _pair_or_quad(args.dilation, "--dilation", False)
        pad = _pair_or_quad(args.padding, "--padding", True)
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"fastconv explain: {e}")
    if len(stride) != 2 or len(dilation) != 2:
        raise SystemExit("fastconv explain: --stride and --dilation take 1 or 2 integers")
    padding = pad if len(pad) == 4 else (pad[0], pad[0], pad[1], pad[1])
    if args.groups <= 0 or c % args.groups or k % args.groups:
        raise SystemExit(f"fastconv explain: --groups {args.groups} must divide in_channels {c} and out_channels {k}")
    if cg != c // args.groups:
        raise SystemExit(f"fastconv explain: weight has {cg} input channels per group; expected C/groups = {c // args.groups}")
    spec = ConvSpec(n, c, h, w, k, r, s, stride, padding, dilation, args.groups, dtype, args.layout, args.device)
    if spec.Ho <= 0 or spec.Wo <= 0:
        raise SystemExit(f"fastconv explain: the output would be empty ({spec.Ho}x{spec.Wo}); kernel larger than padded input")
    return spec


def layer_spec(text: str):
    """SUITE:NAME from fastconv.bench.tables: a table row name (`layer1_3x3_64`), a torchvision
    module path (`layer1.0.conv2`, `features.3.conv.1.0`) or a ResNet stage name (`conv2_x`)."""
    from ..bench import tables

    if ":" not in text:
        raise SystemExit(f"fastconv explain: --layer takes SUITE:NAME (suites: {', '.join(tables.SUITES)}), "
                         f"got {text!r}")
    suite, name = text.split(":", 1)
    if suite not in tables.SUITES:
        raise SystemExit(f"fastconv explain: --layer {text}: unknown suite {suite!r}; expected one of "
                         f"{', '.join(tables.SUITES)}")
    try:
        return tables.find(suite, name).spec
    except ValueError as e:
        raise SystemExit(f"fastconv explain: --layer {text}: {e}")


def run(args) -> int:
    if args.vs_linear:
        from . import vs_linear

        batches = [int(b) for b in str(args.batch).split(",")]
        res = vs_linear.compare(batches=batches, device=args.device,
                                min_run_time=0.05 if args.quick else 0.2)
        if args.json:
            print(json.dumps(res, indent=1))
        else:
            print(vs_linear.format_text(res))
        return 0
    spec = spec_from_args(args)
    if args.out:  # before any work: a bad --out fails at once
        from ..bench.cli import output_dir

        output_dir(args.out, "fastconv explain")
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastconv explain: --device cuda but torch.cuda.is_available() is False")
    from . import machine, report

    try:
        ceil = machine.ceilings(quick=args.quick) if spec.device == "cpu" else None
        res = report.explain(spec, algos=args.algo, simulate_caches=args.simulate, measure=args.measure,
                             ceilings=ceil, sample_accesses=args.sample,
                             min_run_time=0.05 if args.quick else 0.3)
    except ValueError as e:
        raise SystemExit(f"fastconv explain: {e}")
    if args.out:
        from . import pictures

        res["pictures"] = pictures.draw_all(spec, res, args.out)
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=float)
        print()
    else:
        print(report.format_text(res))
        if args.out:
            print("\npictures: " + ", ".join(res["pictures"]))
    return 0
