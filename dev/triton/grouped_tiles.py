"""GPU experiment for kernels/grouped.py: race the tile variants on ResNeXt-50's grouped
3x3 layers (batch 32, channels_last) against cuDNN and triton_igemm, in one process,
after a parallel compile phase. It produced results/grouped_tiles/.

Ran on commit e5f39aa: it reaches into that commit's kernels/grouped.py internals
(`_launcher`, `_shape_key`, the tuners' memory).

    python grouped_exp.py compile I N   # compile shard I of N (run N of these in parallel)
    python grouped_exp.py time          # correctness, then CUDA-graph times; one table

KDIR (env) is the directory holding the `kernels` package (default: the repo root). The
runs used (from the repository root, 15 compile shards in parallel, then the time phase):

    export KDIR=$PWD FASTCONV_TUNE=0 FASTCONV_POISON=1 FASTCONV_CACHE_DIR=$(mktemp -d)
    export TRITON_CACHE_DIR=$(mktemp -d)
    cp benchmarks/results/nvidia-h200/triton_tiles.json $FASTCONV_CACHE_DIR/  # igemm's tiles
    for i in $(seq 0 14); do python benchmarks/grouped_exp.py compile $i 15 & done; wait
    BUDGET_S=120 python benchmarks/grouped_exp.py time

The variant list below is the one after the two runs (it adds the "bdp"/"bdk" tiles the
runs did not time); the logs name the variants each run timed.
"""
import os
import sys
import time

sys.path.insert(0, os.environ.get("KDIR", os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import _common, grouped, igemm  # noqa: E402

BATCH = int(os.environ.get("BATCH", "32"))
DEV = os.environ.get("DEV", "cuda")  # "cpu" + TRITON_INTERPRET=1: a smoke test of the script
torch.backends.cudnn.benchmark = True
LAYERS = [  # C(=K), H, stride; groups 32, 3x3, padding 1
    (128, 56, 1), (256, 56, 2), (256, 28, 1), (512, 28, 2), (512, 14, 1), (1024, 14, 2),
    (1024, 7, 1),
]
DTYPES = [("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)]
def _bd(kind, x, m, w):
    return dict(KIND=kind, GPT_X=x, BLOCK_M=m, num_warps=w, num_stages=2)


FWD = {
    "bd1_m128w4": _bd("bd", 1, 128, 4),
    "bd1_m64w4": _bd("bd", 1, 64, 4),
    "bd2_m128w4": _bd("bd", 2, 128, 4),      # round 1's winner on most bf16 layers
    "bd2_m256w8": _bd("bd", 2, 256, 8),
    "bd2_m64w4": _bd("bd", 2, 64, 4),
    "bd4_m128w4": _bd("bd", 4, 128, 4),
    "bd1_m128w2": _bd("bd", 1, 128, 2),      # 2 warps: mma.sync instead of wgmma
    "bd2_m128w2": _bd("bd", 2, 128, 2),
    "bdp2_m128w4s3": dict(_bd("bdp", 2, 128, 4), num_stages=3),  # tap loop pipelined
    "bdp1_m128w4s3": dict(_bd("bdp", 1, 128, 4), num_stages=3),
    "bdp2_m64w4s4": dict(_bd("bdp", 2, 64, 4), num_stages=4),
    "bdp1_m64w4s4": dict(_bd("bdp", 1, 64, 4), num_stages=4),
    "bdp2_m256w8s3": dict(_bd("bdp", 2, 256, 8), num_stages=3),
    "bdk1_m64w4": _bd("bdk", 1, 64, 4),      # 8 taps in one K=8*GPT*Cg dot
    "bdk2_m64w4": _bd("bdk", 2, 64, 4),
    "bdk1_m128w8": _bd("bdk", 1, 128, 8),
    "bdk1_m32w2": _bd("bdk", 1, 32, 2),
    "bdk2_m64w8": _bd("bdk", 2, 64, 8),
}
BWD_IN = {k: FWD[k] for k in ("bd1_m128w4", "bd2_m128w4", "bd1_m64w4", "bd2_m64w4",
                                "bdp2_m128w4s3", "bdp1_m64w4s4")}
BWD_W = {f"{c['KIND']}_q{c['BLOCK_Q']}x{c['GPT_X']}w{c['num_warps']}p{c.get('PROGS', 4)}": c
         for c in grouped.WGRAD_CONFIGS}
BWD_DTYPES = ("bf16", "tf32")


def make(c, h, s, dtype):
    g = 32
    x = torch.randn(BATCH, c, h, h, device=DEV).to(dtype).contiguous(
        memory_format=torch.channels_last)
    w = (torch.randn(c, c // g, 3, 3, device=DEV) / (c // g * 9) ** 0.5).to(dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    return x, w, (s, s), (1, 1, 1, 1), (1, 1), g


def fwd_launch(x, w, st, pad, dil, g):
    n, c, h, wd = x.shape
    k, cg = w.shape[:2]
    ho, wo = grouped._out_hw(h, wd, 3, 3, st, pad, dil)
    y = _common.new_output((n, k, ho, wo), x, True)
    launch = grouped._launcher(x.shape, y.shape, cg, k // g, g, 3, 3, st, pad, dil, False, 0,
                               False, _common.dot_args(x.dtype), x.stride(), w.stride(),
                               y.stride())
    return (lambda cfg: launch(cfg, x, w, None, y)), y


def bin_launch(dy, w, xshape, st, pad, dil, g):
    k, cg = w.shape[:2]
    dx = _common.new_output(xshape, dy, True)
    launch = grouped._launcher(dy.shape, dx.shape, k // g, cg, g, 3, 3, st, pad, dil, True, 0,
                               False, _common.dot_args(dy.dtype), dy.stride(), w.stride(),
                               dx.stride())
    return (lambda cfg: launch(cfg, dy, w, None, dx)), dx


def fwd_ok(name, li):
    c, h, s = LAYERS[li]
    cg = c // 32
    m = BATCH * ((h - 1) // s + 1) ** 2
    if name in ("bd2_m256w8", "bdp2_m256w8s3") and m < 20000 or name == "bdk1_m32w2" and m > 20000:
        return False  # big tiles for big layers, small ones for small layers
    cfg = FWD[name]
    gpt = grouped._min_gpt(cg, cg) * cfg["GPT_X"]
    if gpt > 32:
        return False
    if cfg["KIND"] == "bdk":  # [BLOCK_M, 8 taps, GPT*Cg] gathered tile in registers
        return cfg["BLOCK_M"] * 8 * gpt * cg <= 8192 * cfg["num_warps"]
    return True


def bw_ok(name, li):
    cg = LAYERS[li][0] // 32
    cfg = BWD_W[name]
    gpt = grouped._min_gpt(cg, cg) * cfg["GPT_X"]
    if gpt > 32:
        return False
    if cfg["KIND"] == "taps":
        return gpt * cg * 16 * gpt * cg <= grouped.TAPS_ACC_PER_WARP * cfg["num_warps"]
    return True


def jobs():
    """Every (kind, layer, dtype, variant) the time phase runs, in a fixed order."""
    out = []
    for li, (c, h, s) in enumerate(LAYERS):
        for dn, _, _ in DTYPES:
            out.append(("cudnn_igemm", li, dn, None))
            out += [("fwd", li, dn, v) for v in FWD if fwd_ok(v, li)]
    for li, (c, h, s) in enumerate(LAYERS):  # backward last: the budget cuts it first
        for dn, _, _ in DTYPES:
            if dn in BWD_DTYPES:
                out += [("bin", li, dn, v) for v in BWD_IN]
                out += [("bw", li, dn, v) for v in BWD_W if bw_ok(v, li)]
                out.append(("igemm_bwd", li, dn, None))
    return out


def setup(li, dn):
    c, h, s = LAYERS[li]
    _, dtype, tf32 = dict((d[0], d) for d in DTYPES)[dn]
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(li)
    return make(c, h, s, dtype)


def run_job(job, timing):
    kind, li, dn, v = job
    x, w, st, pad, dil, g = setup(li, dn)
    if kind == "cudnn_igemm":
        ref = F.conv2d(x, w, None, st, 1, dil, g)
        ours = lambda: igemm.conv2d(x, w, None, st, pad, dil, g)  # noqa: E731
        out = ours()
        if not timing:
            return None
        return dict(err=rel(out, ref), t=_common.gpu_time(ours, reps=15),
                    t_ref=_common.gpu_time(lambda: F.conv2d(x, w, None, st, 1, dil, g), reps=15))
    if kind == "fwd":
        launch, y = fwd_launch(x, w, st, pad, dil, g)
        launch(FWD[v])
        if not timing:
            return None
        ref = F.conv2d(x, w, None, st, 1, dil, g)
        return dict(err=rel(y, ref), t=_common.gpu_time(lambda: launch(FWD[v]), reps=15))
    ref = F.conv2d(x, w, None, st, 1, dil, g)
    dy = torch.randn_like(ref)
    if kind == "bin":
        launch, dx = bin_launch(dy, w, x.shape, st, pad, dil, g)
        launch(BWD_IN[v])
        if not timing:
            return None
        rx = torch.ops.aten.convolution_backward(dy, x, w, None, st, (1, 1), dil, False, (0, 0),
                                                 g, (True, False, False))[0]
        t_ref = _common.gpu_time(lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, st, (1, 1), dil, False, (0, 0), g, (True, False, False)), reps=15)
        return dict(err=rel(dx, rx), t=_common.gpu_time(lambda: launch(BWD_IN[v]), reps=15),
                    t_ref=t_ref)
    if kind == "bw":
        grouped._wgrad_tuner.memory.clear()
        grouped._bwd_weight_plans.clear()
        key = grouped._shape_key(*x.shape, *w.shape, st, pad, dil, g, x, dy)
        dev = _common.device_name(x.device)
        import triton
        grouped._wgrad_tuner.memory[
            f"grouped_bwd_weight|{dev}|triton-{triton.__version__}|{key}"] = BWD_W[v]
        fn = lambda: grouped.conv2d_grad_weight(dy, x, list(w.shape), st, pad, dil, g)  # noqa
        dw = fn()
        if not timing:
            return None
        rw = torch.ops.aten.convolution_backward(dy, x, w, None, st, (1, 1), dil, False, (0, 0),
                                                 g, (False, True, False))[1]
        t_ref = _common.gpu_time(lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, st, (1, 1), dil, False, (0, 0), g, (False, True, False)), reps=15)
        return dict(err=rel(dw, rw), t=_common.gpu_time(fn, reps=15), t_ref=t_ref)
    if kind == "igemm_bwd":
        fi = lambda: igemm.conv2d_grad_input(dy, w, list(x.shape), st, pad, dil, g)  # noqa
        fw = lambda: igemm.conv2d_grad_weight(dy, x, list(w.shape), st, pad, dil, g)  # noqa
        fi(), fw()
        if not timing:
            return None
        return dict(err=0.0, t=_common.gpu_time(fi, reps=15), t_ref=_common.gpu_time(fw, reps=15))
    raise ValueError(kind)


def rel(a, b):
    assert not torch.isnan(a).any(), "NaN in output"
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    mode = sys.argv[1]
    all_jobs = jobs()
    if mode == "compile":
        i, n = int(sys.argv[2]), int(sys.argv[3])
        t0 = time.time()
        for j in all_jobs[i::n]:
            try:
                run_job(j, False)
            except Exception as e:  # noqa: BLE001
                print("compile fail", j, repr(e)[:300], flush=True)
        torch.cuda.synchronize()
        print(f"shard {i}: {len(all_jobs[i::n])} jobs {time.time() - t0:.1f}s", flush=True)
        return
    budget = float(os.environ.get("BUDGET_S", "120"))
    t0 = time.time()
    res = {}
    for j in all_jobs:
        if time.time() - t0 > budget:
            print("budget hit; skipping", j, flush=True)
            continue
        try:
            res[j] = run_job(j, True)
        except Exception as e:  # noqa: BLE001
            print("FAIL", j, repr(e)[:300], flush=True)
    print(f"\ntime phase {time.time() - t0:.1f}s\n")
    print("FORWARD (us, CUDA-graph median)  layer dtype | cudnn igemm | variants... | best  "
          "cudnn/best")
    for li, (c, h, s) in enumerate(LAYERS):
        for dn, dtype, _ in DTYPES:
            base = res.get(("cudnn_igemm", li, dn, None))
            if not base:
                continue
            cells, best = [], None
            for v in FWD:
                r = res.get(("fwd", li, dn, v))
                if r is None:
                    continue
                flag = "" if r["err"] < (2e-2 if dn == "bf16" else 5e-3) else "!BAD"
                cells.append(f"{v}={r['t'] * 1e3:.1f}{flag}")
                if not flag and (best is None or r["t"] < best[1]):
                    best = (v, r["t"])
            esz = 2 if dn == "bf16" else 4
            ho = (h - 1) // s + 1
            mb = BATCH * c * (h * h + ho * ho) * esz / 1e6
            line = (f"C{c:<4d} {h:3d}^2 s{s} {dn} | cudnn {base['t_ref'] * 1e3:6.1f} igemm "
                    f"{base['t'] * 1e3:6.1f} (err {base['err']:.1e}) | " + " ".join(cells))
            if best:
                line += (f" | best {best[0]} {best[1] * 1e3:.1f}us x{base['t_ref'] / best[1]:.2f} "
                         f"vs cudnn, x{base['t'] / best[1]:.1f} vs igemm, "
                         f"{mb / 1e3 / (best[1] * 1e-3):.0f} GB/s ({mb:.0f} MB)")
            print(line, flush=True)
    print("\nBACKWARD (us): grad_input variants vs cudnn dgrad | grad_weight variants vs "
          "cudnn wgrad | igemm dgrad, wgrad")
    for li, (c, h, s) in enumerate(LAYERS):
        for dn in BWD_DTYPES:
            bi = {v: res.get(("bin", li, dn, v)) for v in BWD_IN}
            bw = {v: res.get(("bw", li, dn, v)) for v in BWD_W}
            ig = res.get(("igemm_bwd", li, dn, None))
            ref_i = next((r["t_ref"] for r in bi.values() if r), float("nan"))
            ref_w = next((r["t_ref"] for r in bw.values() if r), float("nan"))
            ci = " ".join(f"{v}={r['t'] * 1e3:.1f}(e{r['err']:.0e})" for v, r in bi.items() if r)
            cw = " ".join(f"{v}={r['t'] * 1e3:.1f}(e{r['err']:.0e})" for v, r in bw.items() if r)
            igs = f"{ig['t'] * 1e3:.1f}, {ig['t_ref'] * 1e3:.1f}" if ig else "-"
            print(f"C{c:<4d} {h:3d}^2 s{s} {dn} | dgrad cudnn {ref_i * 1e3:.1f}: {ci} | "
                  f"wgrad cudnn "
                  f"{ref_w * 1e3:.1f}: {cw} | igemm {igs}", flush=True)


if __name__ == "__main__":
    main()
