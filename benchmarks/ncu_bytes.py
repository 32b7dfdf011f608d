"""DRAM and L2 bytes of fastconv's GPU kernels (and cuDNN's) read from the hardware
counters by Nsight Compute, against fastconv explain's GPU byte model.

Two steps (benchmarks/gpu.sh runs both when NCU=1):

    ncu --clock-control none --profile-from-start off --csv --print-units base \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex.sum,gpu__time_duration.sum \
        --log-file ncu.csv python benchmarks/ncu_bytes.py emit --model model.json
    python benchmarks/ncu_bytes.py report ncu.csv model.json --out DIR

`emit` runs each layer once outside the profiled range (tile tuning and compilation),
then inside it: a marker kernel, fastconv's forward, a second marker, cuDNN's forward
(F.conv2d). ncu flushes the caches before each profiled kernel (--cache-control all, its
default), so DRAM bytes are the cold-cache traffic the model's "HBM" level predicts.
`report` splits the kernel list at the markers and writes ncu_bytes.csv and ncu_bytes.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import defaultdict

import torch

# (suite, layer name, dtype, layout) at batch 32: the families fastconv has on the GPU.
LAYERS = (
    ("mobilenetv2", "b3_dw3x3_144", "float32", "nchw"),
    ("mobilenetv2", "b3_dw3x3_144", "bfloat16", "nhwc"),
    ("convnext_t", "stage1_dw7x7_96", "float32", "nchw"),
    ("convnext_t", "stage1_dw7x7_96", "bfloat16", "nhwc"),
    ("resnet50", "layer1_1x1_256to64", "bfloat16", "nhwc"),
    ("resnet50", "layer1_3x3_64", "bfloat16", "nhwc"),
    ("resnet50", "layer3_3x3_256", "bfloat16", "nhwc"),
    ("resnet50", "conv1_7x7_s2", "bfloat16", "nhwc"),
    ("resnext", "layer2_gconv3x3_256_g32", "bfloat16", "nhwc"),
)
BATCH = 32
METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_sectors_srcunit_tex.sum",
           "gpu__time_duration.sum")
MARK_OURS, MARK_CUDNN = "_ncu_mark_fastconv", "_ncu_mark_cudnn"


def _layers():
    from fastconv.bench import tables

    out = []
    for suite, name, dtype, layout in LAYERS:
        found = [l for l in tables.load(suite, batch=BATCH, dtype=getattr(torch, dtype),
                                        layout=layout, device="cuda") if l.name == name]
        if not found:
            raise SystemExit(f"ncu_bytes: no layer {name!r} in suite {suite!r}")
        out.append((f"{suite}:{name}", dtype, layout, found[0].spec))
    return out


def emit(model_path: str) -> None:
    import triton
    import triton.language as tl

    import fastconv
    from fastconv.explain import machine, model as cmodel

    # Two distinct kernel names delimit each layer's kernels in ncu's list.
    @triton.jit
    def _ncu_mark_fastconv(p):
        tl.store(p, 1.0)

    @triton.jit
    def _ncu_mark_cudnn(p):
        tl.store(p, 2.0)

    torch.backends.cudnn.benchmark = True
    flag = torch.zeros(1, device="cuda")
    rows = []
    for label, dtype, layout, spec in _layers():
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        x = torch.randn(spec.input_shape, device="cuda", dtype=getattr(torch, dtype)).to(memory_format=fmt)
        w = torch.randn(spec.weight_shape, device="cuda", dtype=x.dtype).to(memory_format=fmt)
        args = (None, spec.stride, (spec.padding[0], spec.padding[2]), spec.dilation, spec.groups)
        ours = lambda: fastconv.conv2d(x, w, *args)  # noqa: E731
        cudnn = lambda: torch.nn.functional.conv2d(x, w, *args)  # noqa: E731
        for _ in range(3):  # tuning, compilation, cudnn.benchmark's search: all unprofiled
            ours(), cudnn()
        torch.cuda.synchronize()
        algo = fastconv.functional.select(spec.with_(dtype=x.dtype, layout=layout, device="cuda")).name
        torch.cuda.profiler.start()
        _ncu_mark_fastconv[(1,)](flag)
        ours()
        _ncu_mark_cudnn[(1,)](flag)
        cudnn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        mod = cmodel.gpu_cost_model(spec, machine.GPU_L2_BYTES)
        rows.append(dict(layer=label, dtype=dtype, layout=layout, algo=algo, flops=spec.flops,
                         min_bytes=spec.min_bytes, model_l2=mod["L2"], model_hbm=mod["HBM"]))
    with open(model_path, "w") as f:
        json.dump(rows, f, indent=1)


_UNITS = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "sector": 1, "nsecond": 1,
          "usecond": 1e3, "msecond": 1e6, "second": 1e9}


def _read_ncu(path: str) -> list[tuple[str, dict]]:
    """[(kernel name, {metric: value in bytes / sectors / ns})] in launch order."""
    with open(path) as f:
        lines = f.readlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        raise SystemExit(f"ncu_bytes: no CSV table in {path}; ncu said:\n{''.join(lines[-20:])}")
    kernels: dict[int, tuple[str, dict]] = {}
    for r in csv.DictReader(lines[start:]):
        kid = int(r["ID"])
        name, metrics = kernels.setdefault(kid, (r["Kernel Name"], {}))
        value = float(r["Metric Value"].replace(",", "")) if r["Metric Value"] not in ("", "n/a") else math.nan
        metrics[r["Metric Name"]] = value * _UNITS.get(r["Metric Unit"].lower(), 1)
    return [kernels[k] for k in sorted(kernels)]


def report(ncu_csv: str, model_path: str, out: str) -> None:
    with open(model_path) as f:
        rows = json.load(f)
    groups: list[dict] = []  # per layer: {"fastconv": [...], "cudnn": [...]}
    side = None
    for name, metrics in _read_ncu(ncu_csv):
        short = name.split("(")[0].split()[-1]
        if short == MARK_OURS:
            groups.append(defaultdict(list))
            side = "fastconv"
        elif short == MARK_CUDNN:
            side = "cudnn"
        elif side is not None:
            groups[-1][side].append((short, metrics))
    if len(groups) != len(rows):
        raise SystemExit(f"ncu_bytes: {len(rows)} layers emitted but {len(groups)} found in {ncu_csv}")
    table = []
    for row, g in zip(rows, groups):
        for side in ("fastconv", "cudnn"):
            ks = g[side]
            tot = lambda m: sum(k[1].get(m, 0.0) for k in ks)  # noqa: E731
            dram = tot("dram__bytes_read.sum") + tot("dram__bytes_write.sum")
            l2 = tot("lts__t_sectors_srcunit_tex.sum") * 32
            t_us = tot("gpu__time_duration.sum") / 1e3
            table.append(dict(
                layer=row["layer"], dtype=row["dtype"], layout=row["layout"], impl=side,
                kernels="+".join(k[0][:40] for k in ks), algo=row["algo"] if side == "fastconv" else "cudnn",
                min_bytes=row["min_bytes"], model_hbm=row["model_hbm"], model_l2=row["model_l2"],
                dram_bytes=dram, l2_bytes=l2, time_us=t_us,
                dram_vs_model=dram / row["model_hbm"] if row["model_hbm"] else math.nan,
                l2_vs_model=l2 / row["model_l2"] if row["model_l2"] else math.nan,
                dram_GBps=dram / (t_us * 1e3) if t_us else math.nan))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ncu_bytes.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(table[0]))
        wr.writeheader()
        wr.writerows(table)
    mb = lambda v: f"{v / 1e6:.1f}"  # noqa: E731
    lines = ["| layer | dtype | layout | impl | min MB | model HBM MB | ncu DRAM MB | DRAM/model | "
             "model L2 MB | ncu L2 MB | L2/model | time us | DRAM GB/s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        lines.append(f"| {t['layer']} | {t['dtype']} | {t['layout']} | {t['algo']} | {mb(t['min_bytes'])} | "
                     f"{mb(t['model_hbm'])} | {mb(t['dram_bytes'])} | {t['dram_vs_model']:.2f} | "
                     f"{mb(t['model_l2'])} | {mb(t['l2_bytes'])} | {t['l2_vs_model']:.2f} | "
                     f"{t['time_us']:.1f} | {t['dram_GBps']:.0f} |")
    with open(os.path.join(out, "ncu_bytes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("emit", help="run the layers (under ncu)")
    e.add_argument("--model", required=True, help="where to write the layers' model bytes (JSON)")
    r = sub.add_parser("report", help="join ncu's CSV with the model")
    r.add_argument("ncu_csv")
    r.add_argument("model")
    r.add_argument("--out", default=".")
    args = p.parse_args(argv)
    if args.cmd == "emit":
        if not torch.cuda.is_available():
            raise SystemExit("ncu_bytes emit: needs a CUDA device")
        emit(args.model)
    else:
        report(args.ncu_csv, args.model, args.out)


if __name__ == "__main__":
    sys.exit(main())
