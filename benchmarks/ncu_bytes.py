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
        before = _tuner_choices()
        for _ in range(3):  # tuning, compilation, cudnn.benchmark's search: all unprofiled
            ours(), cudnn()
        # The tile the forward launched (the tuner's new choice; the cached one if this
        # shape was tuned in an earlier process and nothing new was picked).
        tile = next((cfg for key, cfg in _tuner_choices().items() if key not in before), None)
        torch.cuda.synchronize()
        algo = fastconv.functional.select(spec.with_(dtype=x.dtype, layout=layout, device="cuda")).name
        torch.cuda.profiler.start()
        _ncu_mark_fastconv[(1,)](flag)
        ours()
        _ncu_mark_cudnn[(1,)](flag)
        cudnn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        sp = spec.with_(dtype=x.dtype, layout=layout, device="cuda")
        mod = cmodel.gpu_cost_model(sp, machine.GPU_L2_BYTES, tile)
        rows.append(dict(layer=label, dtype=dtype, layout=layout, algo=algo, flops=spec.flops,
                         tile={k: v for k, v in (tile or {}).items() if k.startswith(("BLOCK", "ROWS", "KIND"))},
                         min_bytes=spec.min_bytes, model_l2=mod["L2"], model_hbm=mod["HBM"],
                         model_read=mod["HBM_read"], model_write=mod["HBM_write"]))
    with open(model_path, "w") as f:
        json.dump(rows, f, indent=1)


def _tuner_choices() -> dict:
    """Every tile choice the Triton kernels' tuner made in this process, by key."""
    from fastconv.kernels import _plan

    return dict(_plan.tuned())


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
            read, write = tot("dram__bytes_read.sum"), tot("dram__bytes_write.sum")
            l2 = tot("lts__t_sectors_srcunit_tex.sum") * 32
            t_us = tot("gpu__time_duration.sum") / 1e3
            ours = side == "fastconv"
            table.append(dict(
                layer=row["layer"], dtype=row["dtype"], layout=row["layout"],
                impl=row["algo"] if ours else "cudnn", kernels="+".join(k[0][:48] for k in ks),
                tile=" ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in row.get("tile", {}).items()) if ours else "",
                min_bytes=row["min_bytes"], model_read=row["model_read"], dram_read=read,
                read_vs_model=read / row["model_read"], model_write=row["model_write"],
                dram_write=write, model_l2=row["model_l2"] if ours else math.nan, l2_bytes=l2,
                l2_vs_model=l2 / row["model_l2"] if ours else math.nan, time_us=t_us,
                dram_GBps=(read + write) / (t_us * 1e3) if t_us else math.nan))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ncu_bytes.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(table[0]))
        wr.writeheader()
        wr.writerows(table)
    mb = lambda v: "–" if v != v else f"{v / 1e6:.1f}"  # noqa: E731
    ratio = lambda v: "–" if v != v else f"{v:.2f}"  # noqa: E731
    lines = ["| layer | dtype | layout | impl (tile) | model read MB | DRAM read MB | read/model | "
             "output MB | DRAM write MB | model L2 MB | L2 MB | L2/model | time us |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        impl = t["impl"] + (f" ({t['tile']})" if t["tile"] else "")
        lines.append(f"| {t['layer']} | {t['dtype']} | {t['layout']} | {impl} | {mb(t['model_read'])} | "
                     f"{mb(t['dram_read'])} | {ratio(t['read_vs_model'])} | {mb(t['model_write'])} | "
                     f"{mb(t['dram_write'])} | {mb(t['model_l2'])} | {mb(t['l2_bytes'])} | "
                     f"{ratio(t['l2_vs_model'])} | {t['time_us']:.1f} |")
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
