"""GPU experiment for kernels/grouped.py: race the tile variants on ResNeXt-50's grouped
3x3 layers (batch 32, channels_last) against cuDNN and triton_igemm, in one process,
after a parallel compile phase. It produced results/grouped_tiles/.

Written against the current code: each tile runs as a plan built under a policy that forces
it (grouped.POLICY.forcing), timed with the one CUDA-graph timer (fastconv/kernels/timing.py).
The two runs in results/grouped_tiles/ used an earlier version at commit e5f39aa.

    python dev/triton/grouped_tiles.py compile I N   # compile shard I of N (N in parallel)
    python dev/triton/grouped_tiles.py time          # correctness, then CUDA-graph times
    DEV=cpu BATCH=1 TRITON_INTERPRET=1 python dev/triton/grouped_tiles.py smoke  # CPU check

The runs used (from the repository root, 15 compile shards in parallel, then the time phase):

    export FASTCONV_TUNE=0 FASTCONV_POISON=1 FASTCONV_CACHE_DIR=$(mktemp -d)
    export TRITON_CACHE_DIR=$(mktemp -d)
    for i in $(seq 0 14); do python dev/triton/grouped_tiles.py compile $i 15 & done; wait
    BUDGET_S=120 python dev/triton/grouped_tiles.py time

The variant list below is the one after the two runs (it adds the "bdp"/"bdk" tiles the
runs did not time); the logs name the variants each run timed.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

from fastconv.kernels import grouped, igemm
from fastconv.kernels.timing import cuda_graph_time

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


def gpu_time(fn):
    return cuda_graph_time(fn, calls=10, reps=15)


def forced(direction, cfg, *args):
    """fn() -> the result of one grouped plan with its tile forced to cfg."""
    tiles = {"fwd": "grouped_fwd", "bin": "grouped_bwd_input", "bw": "grouped_bwd_weight"}
    policy = grouped.POLICY.forcing(**{tiles[direction]: cfg})
    fam = grouped.FAMILY
    if direction == "fwd":
        x, w, st, pad, dil, g = args
        plan = fam.plan_forward(x, w, None, st, pad, dil, g, "none", policy)
        return lambda: plan.run(x, w, None)
    dy, t, size, st, pad, dil, g = args
    planner = fam.plan_grad_input if direction == "bin" else fam.plan_grad_weight
    plan = planner(dy, t, tuple(size), st, pad, dil, g, policy)
    return lambda: plan.run(dy, t)


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
        return gpt * cg * 16 * gpt * cg <= grouped.POLICY.taps_acc_per_warp * cfg["num_warps"]
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
        return dict(err=rel(out, ref), t=gpu_time(ours),
                    t_ref=gpu_time(lambda: F.conv2d(x, w, None, st, 1, dil, g)))
    if kind == "fwd":
        fn = forced("fwd", FWD[v], x, w, st, pad, dil, g)
        y = fn()
        if not timing:
            return None
        ref = F.conv2d(x, w, None, st, 1, dil, g)
        return dict(err=rel(y, ref), t=gpu_time(fn))
    ref = F.conv2d(x, w, None, st, 1, dil, g)
    dy = torch.randn_like(ref)
    if kind == "bin":
        fn = forced("bin", BWD_IN[v], dy, w, x.shape, st, pad, dil, g)
        dx = fn()
        if not timing:
            return None
        rx = torch.ops.aten.convolution_backward(dy, x, w, None, st, (1, 1), dil, False, (0, 0),
                                                 g, (True, False, False))[0]
        t_ref = gpu_time(lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, st, (1, 1), dil, False, (0, 0), g, (True, False, False)))
        return dict(err=rel(dx, rx), t=gpu_time(fn), t_ref=t_ref)
    if kind == "bw":
        fn = forced("bw", BWD_W[v], dy, x, w.shape, st, pad, dil, g)
        dw = fn()
        if not timing:
            return None
        rw = torch.ops.aten.convolution_backward(dy, x, w, None, st, (1, 1), dil, False, (0, 0),
                                                 g, (False, True, False))[1]
        t_ref = gpu_time(lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, st, (1, 1), dil, False, (0, 0), g, (False, True, False)))
        return dict(err=rel(dw, rw), t=gpu_time(fn), t_ref=t_ref)
    if kind == "igemm_bwd":
        fi = lambda: igemm.conv2d_grad_input(dy, w, list(x.shape), st, pad, dil, g)  # noqa
        fw = lambda: igemm.conv2d_grad_weight(dy, x, list(w.shape), st, pad, dil, g)  # noqa
        fi(), fw()
        if not timing:
            return None
        return dict(err=0.0, t=gpu_time(fi), t_ref=gpu_time(fw))
    raise ValueError(kind)


def rel(a, b):
    assert not torch.isnan(a).any(), "NaN in output"
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def smoke():
    """Every forward, grad_input and grad_weight tile on each layer's channels at a 6x6 plane
    against float64 (the interpreter on a CPU: DEV=cpu TRITON_INTERPRET=1), nothing timed."""
    for li, (c, h, s) in enumerate(LAYERS):
        LAYERS[li] = (c, min(h, 6), s)
        x, w, st, pad, dil, g = setup(li, "tf32")
        xd, wd = x.double(), w.double()
        ref = F.conv2d(xd, wd, None, st, 1, dil, g)
        dy = torch.randn(ref.shape, device=DEV).contiguous(memory_format=torch.channels_last)
        rx = torch.nn.grad.conv2d_input(x.shape, wd, dy.double(), st, 1, dil, g)
        rw = torch.nn.grad.conv2d_weight(xd, w.shape, dy.double(), st, 1, dil, g)
        checks = [(forced("fwd", FWD[v], x, w, st, pad, dil, g), ref, v) for v in FWD
                  if fwd_ok(v, li)]
        checks += [(forced("bin", BWD_IN[v], dy, w, x.shape, st, pad, dil, g), rx, v)
                   for v in BWD_IN]
        checks += [(forced("bw", BWD_W[v], dy, x, w.shape, st, pad, dil, g), rw, v)
                   for v in BWD_W if bw_ok(v, li)]
        for fn, want, v in checks:
            err = ((fn().double() - want).norm() / want.norm()).item()
            assert err < 1e-4, (LAYERS[li], v, err)
        print(f"smoke ok C{c} s{s}: {len(checks)} tiles", flush=True)


def main():
    mode = sys.argv[1]
    all_jobs = jobs()
    if mode == "smoke":
        smoke()
        return
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
